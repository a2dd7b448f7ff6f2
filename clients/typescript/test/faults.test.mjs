// The client against real faults: two real herald nodes on a real nats-server, the
// client given both URLs, 1,000 events published at a steady rate, and in the middle
// the node the client is on dies (SIGKILL), drains (SIGTERM → 1001), or NATS itself
// restarts. Every event must arrive exactly once, in order. A revocation (4001) must
// stop the client without a reconnect.
//
//   cargo build -p herald && cd clients/typescript && npm ci && npm run build && npm test

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import WebSocket from "ws";

import { HeraldClient } from "../dist/index.js";
import { Cluster, DEMO, FreezableProxy, Publisher, sleep, waitFor, within } from "./harness.mjs";

const EVENTS = 1000;
/** Steady publish rate: one event every 4 ms (~250/s), so the fault lands mid-stream. */
const INTERVAL_MS = 4;
const FAULT_AT = 300;
const DELIVERY_DEADLINE_MS = 90_000;

/** A client on `urls` that records everything it is told. */
function recordingClient(urls, extra = {}) {
  const client = new HeraldClient({
    urls,
    dialect: "v1",
    auth: { user: DEMO.user, password: DEMO.password },
    WebSocket,
    backoff: { initialMs: 100, maxMs: 1000 },
    ...extra,
  });
  const log = { notifications: [], connected: [], reconnecting: [], closed: [], resync: [], errors: [] };
  client.on("notification", (n) => log.notifications.push(n));
  client.on("connected", (c) => log.connected.push(c));
  client.on("reconnecting", (r) => log.reconnecting.push(r));
  client.on("closed", (c) => log.closed.push(c));
  client.on("resync", (r) => log.resync.push(r));
  client.on("error", (e) => log.errors.push(e));
  return { client, log };
}

/**
 * Publishes EVENTS newMessage events (uid = index) at a steady rate; calls `fault()`
 * once, after event FAULT_AT, without pausing the stream.
 */
async function publishStream(pub, runId, fault) {
  const start = Date.now();
  let faultDone;
  for (let i = 0; i < EVENTS; i++) {
    await pub.alias(DEMO.aliasId, {
      event: "newMessage",
      mailbox: "INBOX",
      message: { uid: i, mailbox: "INBOX", subject: `${runId} #${i}`, eml: `Subject: ${runId} #${i}\r\n\r\nhi` },
    }, `${runId}-${i}`);
    if (i === FAULT_AT) faultDone = fault();
    const due = start + (i + 1) * INTERVAL_MS;
    const wait = due - Date.now();
    if (wait > 0) await sleep(wait);
  }
  await faultDone;
}

/** All EVENTS of this run arrived exactly once and in order. */
function assertExactlyOnceInOrder(log, runId, diag) {
  const mine = log.notifications.filter((n) => n.message?.subject?.startsWith(`${runId} `));
  const uids = mine.map((n) => n.message.uid);
  const dupes = uids.filter((u, i) => uids.indexOf(u) !== i);
  assert.deepEqual(dupes, [], `duplicates delivered: ${dupes.slice(0, 10)}`);
  const missing = [];
  for (let i = 0; i < EVENTS; i++) if (!uids.includes(i)) missing.push(i);
  assert.deepEqual(missing.slice(0, 20), [], `${missing.length} events lost, first: ${missing.slice(0, 20)}\n${diag()}`);
  assert.deepEqual(uids, [...Array(EVENTS).keys()], "events arrived out of order");
  const ids = new Set(mine.map((n) => n.notificationId));
  assert.equal(ids.size, EVENTS, "one notificationId per event");
  const seqs = mine.map((n) => n.seq);
  assert.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), "seq increases");
}

async function waitForAll(log, runId, cluster) {
  await waitFor(
    () => log.notifications.filter((n) => n.message?.subject?.startsWith(`${runId} `)).length >= EVENTS,
    DELIVERY_DEADLINE_MS,
    () => `got ${log.notifications.length}/${EVENTS}; reconnecting ${JSON.stringify(log.reconnecting)}\n${cluster.diag()}`,
  );
  // Anything after the 1,000th would be a duplicate: give it a moment to show up.
  await sleep(500);
}

describe("client across faults (two nodes on NATS)", { timeout: 600_000 }, () => {
  let cluster;
  let pub;

  before(async () => {
    cluster = await Cluster.start({ nodes: 2 });
    pub = await Publisher.connect(cluster.natsUrl);
  });

  after(async () => {
    await pub?.close();
    await cluster?.stop();
  });

  /** Brings both nodes back (a test may have killed one). */
  async function bothNodes() {
    for (const name of ["A", "B"]) {
      const n = cluster.node(name);
      if (!n || n.proc.exitCode !== undefined) await cluster.startNode(name);
    }
    return [cluster.node("A"), cluster.node("B")];
  }

  test("kill -9 of the client's node mid-stream: all 1,000 exactly once, in order, on the other node", async () => {
    const [a, b] = await bothNodes();
    const { client, log } = recordingClient([a.ws("/v1/ws"), b.ws("/v1/ws")]);
    await client.connect();
    assert.equal(log.connected[0].url, a.ws("/v1/ws"));
    const runId = `kill-${Date.now()}`;
    try {
      await publishStream(pub, runId, () => a.proc.kill());
      await waitForAll(log, runId, cluster);
      assertExactlyOnceInOrder(log, runId, () => cluster.diag());
      assert.ok(log.reconnecting.length >= 1, "the client reconnected");
      assert.equal(log.reconnecting[0].code, 1006, `a killed node leaves 1006: ${JSON.stringify(log.reconnecting[0])}`);
      assert.equal(log.connected.at(-1).url, b.ws("/v1/ws"), "resumed on the surviving node");
      assert.deepEqual(log.closed, []);
    } finally {
      await client.close();
    }
  });

  test("graceful drain (SIGTERM → 1001) mid-stream: all 1,000 exactly once, in order", async () => {
    const [a, b] = await bothNodes();
    const { client, log } = recordingClient([a.ws("/v1/ws"), b.ws("/v1/ws")]);
    await client.connect();
    assert.equal(log.connected[0].url, a.ws("/v1/ws"));
    const runId = `drain-${Date.now()}`;
    try {
      await publishStream(pub, runId, () => a.proc.stop());
      await waitForAll(log, runId, cluster);
      assertExactlyOnceInOrder(log, runId, () => cluster.diag());
      assert.equal(log.reconnecting[0]?.code, 1001, `a draining node closes with 1001: ${JSON.stringify(log.reconnecting)}`);
      assert.equal(log.connected.at(-1).url, b.ws("/v1/ws"));
      assert.equal(a.proc.exitCode, 0, "the drained node exits 0");
    } finally {
      await client.close();
    }
  });

  test("NATS restart mid-stream: all 1,000 exactly once, in order", async () => {
    const [a, b] = await bothNodes();
    const { client, log } = recordingClient([a.ws("/v1/ws"), b.ws("/v1/ws")]);
    await client.connect();
    const runId = `nats-${Date.now()}`;
    try {
      await publishStream(pub, runId, async () => {
        await cluster.nats.kill();
        await sleep(1000);
        await cluster.startNats();
      });
      await waitForAll(log, runId, cluster);
      assertExactlyOnceInOrder(log, runId, () => cluster.diag());
      assert.deepEqual(log.closed, []);
    } finally {
      await client.close();
    }
  });

  test("a half-open connection (nothing arrives any more) is detected and replaced without loss", async () => {
    // The node pings every 2 s (harness config); a link silent for 3 s is declared dead.
    const [a, b] = await bothNodes();
    const proxy = await FreezableProxy.start(a.port);
    const viaProxy = `ws://127.0.0.1:${proxy.port}/v1/ws`;
    const { client, log } = recordingClient([viaProxy, b.ws("/v1/ws")], { livenessTimeoutMs: 3000 });
    await client.connect();
    const runId = `halfopen-${Date.now()}`;
    try {
      await publishStream(pub, runId, () => proxy.freeze());
      await waitForAll(log, runId, cluster);
      assertExactlyOnceInOrder(log, runId, () => cluster.diag());
      assert.match(log.reconnecting[0]?.reason ?? "", /no frame for 3000 ms/);
      assert.equal(log.connected.at(-1).url, b.ws("/v1/ws"));
    } finally {
      await client.close();
      proxy.close();
    }
  });

  test("a node that accepts TCP and then says nothing: the attempt is abandoned and the next URL used", async () => {
    const [a, b] = await bothNodes();
    const proxy = await FreezableProxy.start(a.port);
    proxy.freeze();
    const { client, log } = recordingClient([`ws://127.0.0.1:${proxy.port}/v1/ws`, b.ws("/v1/ws")], { connectTimeoutMs: 1500 });
    try {
      await client.connect();
      assert.match(log.reconnecting[0]?.reason ?? "", /no session within 1500 ms/, JSON.stringify(log.reconnecting));
      assert.equal(log.connected[0].url, b.ws("/v1/ws"));
    } finally {
      await client.close();
      proxy.close();
    }
  });

  test("revocation (4001) stops the client with `closed` and no reconnect", async () => {
    const [a, b] = await bothNodes();
    const { client, log } = recordingClient([a.ws("/v1/ws"), b.ws("/v1/ws")]);
    await client.connect();
    const closed = new Promise((r) => client.on("closed", r));
    await pub.core("herald.v1.control.revoke", { aliasId: DEMO.aliasId });
    assert.ok(await within(closed, 10_000), `no closed event: ${JSON.stringify(log)}`);
    assert.equal(log.closed[0].code, 4001);
    await sleep(2000);
    assert.deepEqual(log.reconnecting, [], "no reconnect after a revocation");
    assert.equal(log.connected.length, 1);
    assert.equal(client.connected, false);
    await assert.rejects(client.connect(), /closed/);
  });

  test("wrong password: connect() rejects with 4401, no retry storm", async () => {
    const [a, b] = await bothNodes();
    for (const transport of ["header", "browser"]) {
      const { client, log } = recordingClient([a.ws("/v1/ws"), b.ws("/v1/ws")], {
        auth: { user: DEMO.user, password: "wrong" },
        authTransport: transport,
      });
      await assert.rejects(client.connect(), (err) => err.code === 4401, transport);
      assert.equal(log.closed[0].code, 4401, `${transport}: ${JSON.stringify(log)}`);
      assert.deepEqual(log.reconnecting, [], `${transport}: no reconnect`);
    }
  });

  test("browser auth frame (?auth=message), API token and msgpackr format all resume by seq", async () => {
    const [a, b] = await bothNodes();
    const variants = {
      browser: { authTransport: "browser" },
      token: { auth: { token: DEMO.apiToken, aliasId: DEMO.aliasId } },
      msgpackr: { format: "msgpackr" },
    };
    for (const [name, extra] of Object.entries(variants)) {
      const { client, log } = recordingClient([a.ws("/v1/ws"), b.ws("/v1/ws")], extra);
      await client.connect();
      const runId = `${name}-${Date.now()}`;
      try {
        for (let i = 0; i < 5; i++) {
          await pub.alias(DEMO.aliasId, { event: "flagsUpdated", mailbox: "INBOX", uid: i, flags: ["\\Seen"], run: runId });
        }
        await waitFor(() => log.notifications.filter((n) => n.run === runId).length === 5, 20_000, () => `${name}: ${JSON.stringify(log)}`);
        const got = log.notifications.filter((n) => n.run === runId);
        assert.deepEqual(got.map((n) => n.uid), [0, 1, 2, 3, 4], name);
        assert.equal(typeof got[0].seq, "number", name);
        assert.equal(client.lastSeq, got[4].seq, `${name}: lastSeq is the resume position`);
      } finally {
        await client.close();
      }
    }
  });
});
