// Document 000 (Forward Email's real-time API, `/v1/ws`): runs the document's two client
// snippets — "Browser (JSON)" and "Node.js (msgpackr)" — as the document prints them,
// with only the URL host and the credentials swapped for the demo node's, then publishes
// the document's example `newMessage` payload and checks what the snippets print. The
// msgpackr frames are also compared byte for byte with what msgpackr's own default
// `Encoder` writes for the same notification.

import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { after, before, test } from "node:test";

import { Encoder } from "msgpackr";
import WebSocket from "ws";

import { codeBlocks, DEMO, seed, startHerald } from "../herald.mjs";

const require = createRequire(import.meta.url);

/** What herald adds to every notification, on purpose (SPEC §2 "Enriched payloads"). */
const ADDED_BY_HERALD = {
  aliasId: "the alias the event is for, so one socket can tell aliases apart",
  notificationId: "dedup id, the same on every node and session",
  seq: "stream sequence, for reconnecting with ?since=<seq> without losing events",
};

let node;
let doc;
let browserSnippet;
let msgpackrSnippet;
let examplePayload;

before(async () => {
  doc = await seed("000");
  const js = codeBlocks(doc, "javascript");
  browserSnippet = js.find((b) => b.includes("JSON.parse(event.data)"));
  msgpackrSnippet = js.find((b) => b.includes('require("msgpackr")'));
  assert.ok(browserSnippet && msgpackrSnippet, "document 000 has both client snippets");
  const json = codeBlocks(doc, "json");
  examplePayload = JSON.parse(json.find((b) => b.includes('"newMessage"')));
  node = await startHerald({ HERALD__FORWARDEMAIL__PING_INTERVAL: "1s" });
});

after(async () => {
  await node?.stop();
});

/**
 * The document's snippet with only the host and the credentials replaced; throws if the
 * document changed so that a replacement no longer applies.
 */
function pointAtNode(snippet) {
  const wsBase = node.wsUrl("");
  const replaced = snippet
    .replaceAll("wss://api.forwardemail.net", wsBase)
    .replaceAll("user@domain.com:alias-password", `${DEMO.user}:${DEMO.password}`);
  assert.ok(replaced.includes(wsBase), "the snippet's URL was replaced");
  assert.ok(replaced.includes(DEMO.user), "the snippet's credentials were replaced");
  return replaced;
}

/**
 * Runs a snippet with the real `ws` and `msgpackr` packages; resolves to what it
 * prints (`console.log(notification.event, notification)` → `[event, notification]`)
 * and the sockets it opened.
 */
function runSnippet(code) {
  const printed = [];
  const sockets = [];
  // The socket is the real `ws` class; the subclass only remembers it for closing.
  class TrackedWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const snippetRequire = (name) => (name === "ws" ? TrackedWebSocket : require(name));
  // What a browser (`WebSocket`, `btoa`) or Node (`require`, `Buffer`) provides, minus
  // what the snippet declares itself.
  const globals = {
    WebSocket: TrackedWebSocket,
    require: snippetRequire,
    console: { log: (...args) => printed.push(args) },
    btoa,
    Buffer,
  };
  const names = Object.keys(globals).filter((n) => !new RegExp(`\\b(const|let|var)\\s+${n}\\b`).test(code));
  new Function(...names, code)(...names.map((n) => globals[n]));
  return { printed, sockets };
}

async function until(what, predicate, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Publishes the document's example payload to the demo alias. */
async function publishExample() {
  return node.publish({ aliasId: DEMO.aliasId, payload: examplePayload });
}

/** Checks a printed `newMessage` against the document's example payload. */
function assertLikeExample(event, notification, published) {
  assert.equal(event, "newMessage", "the snippet prints notification.event");
  for (const [key, value] of Object.entries(examplePayload)) {
    assert.deepEqual(notification[key], value, `field ${key} as in the document's example`);
  }
  const extra = Object.keys(notification).filter((k) => !(k in examplePayload));
  assert.deepEqual(extra.sort(), Object.keys(ADDED_BY_HERALD).sort(), "only herald's documented additions");
  assert.equal(notification.aliasId, DEMO.aliasId);
  assert.equal(notification.notificationId, published.notificationId);
  assert.equal(notification.seq, published.seq);
}

test("Browser (JSON) snippet, run unchanged with `ws`, prints newMessage and the example payload", async () => {
  const { printed, sockets } = runSnippet(pointAtNode(browserSnippet));
  try {
    // herald's first frame (SPEC §4.1; the document shows none): `connected`.
    await until("connected", () => printed.length >= 1);
    assert.equal(printed[0][0], "connected");
    assert.deepEqual(printed[0][1], { event: "connected", aliasId: DEMO.aliasId });
    const published = await publishExample();
    await until("newMessage", () => printed.some(([e]) => e === "newMessage"));
    const [event, notification] = printed.find(([e]) => e === "newMessage");
    assertLikeExample(event, notification, published);
  } finally {
    sockets.forEach((s) => s.terminate());
  }
});

test("Node.js (msgpackr) snippet, run unchanged, prints the events (records decode to plain objects)", async () => {
  const { printed, sockets } = runSnippet(pointAtNode(msgpackrSnippet));
  try {
    await until("connected", () => printed.length >= 1);
    // With plain MessagePack maps msgpackr's default Decoder returns a Map and this
    // printed `undefined` (issue 15).
    assert.equal(printed[0][0], "connected");
    assert.deepEqual(printed[0][1], { event: "connected", aliasId: DEMO.aliasId });
    const published = await publishExample();
    await until("newMessage", () => printed.some(([e]) => e === "newMessage"));
    const [event, notification] = printed.find(([e]) => e === "newMessage");
    assertLikeExample(event, notification, published);
    // herald's app-level keepalive (SPEC §4.1; the document only says "30-second
    // ping/pong"), every second here: the same long-lived Decoder reads it too.
    await until("ping", () => printed.some(([e]) => e === "ping"));
    assert.deepEqual(printed.find(([e]) => e === "ping")[1], { event: "ping" });
    assert.ok(printed.every(([e]) => typeof e === "string"), `every frame has an event: ${JSON.stringify(printed)}`);
  } finally {
    sockets.forEach((s) => s.terminate());
  }
});

/** Opens `/v1/ws` with the demo password and collects every data frame, raw. */
async function rawSession(query) {
  const ws = new WebSocket(node.wsUrl(`/v1/ws${query}`), {
    headers: { Authorization: `Basic ${btoa(`${DEMO.user}:${DEMO.password}`)}` },
  });
  const frames = [];
  ws.on("message", (data, isBinary) => frames.push({ data: Buffer.from(data), isBinary }));
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  return { ws, frames };
}

test("?msgpackr=true frames are byte for byte msgpackr's default Encoder output for the JSON frame's object", async () => {
  const json = await rawSession("");
  const records = await rawSession("?msgpackr=true");
  const plain = await rawSession("?msgpack=true");
  try {
    await until("connected on every session", () => [json, records, plain].every((s) => s.frames.length >= 1));
    const published = await publishExample();
    const isNotification = (text) => JSON.parse(text).notificationId === published.notificationId;
    await until("the notification as JSON", () => json.frames.some((f) => !f.isBinary && isNotification(f.data)));
    await until("both binary notifications", () => records.frames.length >= 2 && plain.frames.length >= 2);
    await until("pings in msgpackr", () => records.frames.some((f) => f.data.length < 20 && f.data.includes("ping")));

    const encoder = new Encoder();
    const connectedJson = JSON.parse(json.frames[0].data);
    assert.ok(records.frames.every((f) => f.isBinary), "?msgpackr=true: binary frames only");
    assert.deepEqual(records.frames[0].data, Buffer.from(encoder.pack(connectedJson)), "connected");
    const notificationJson = json.frames.find((f) => !f.isBinary && isNotification(f.data)).data;
    const expected = Buffer.from(encoder.pack(JSON.parse(notificationJson)));
    assert.ok(
      records.frames.some((f) => f.data.equals(expected)),
      `newMessage: expected ${expected.toString("hex")}, got ${records.frames.map((f) => f.data.toString("hex"))}`,
    );
    const ping = Buffer.from(encoder.pack({ event: "ping" }));
    assert.ok(records.frames.some((f) => f.data.equals(ping)), "ping");
    assert.equal(records.frames[0].data[0], 0xd4, "a msgpackr record definition (fixext 1)");
    assert.equal(records.frames[0].data[1], 0x72, "extension type 0x72, msgpackr's record");

    // ?msgpack=true keeps plain MessagePack maps for other languages' decoders.
    const { Decoder } = require("msgpackr");
    const asMap = new Decoder({ mapsAsObjects: false, useRecords: false }).unpack(plain.frames[0].data);
    assert.ok(asMap instanceof Map, "plain MessagePack maps decode to a Map by default");
    assert.equal(asMap.get("event"), "connected");
  } finally {
    [json, records, plain].forEach((s) => s.ws.terminate());
  }
});

test("?msgpackr=true together with ?msgpack=true is refused with 400 and says why", async () => {
  const ws = new WebSocket(node.wsUrl("/v1/ws?msgpackr=true&msgpack=true"), {
    headers: { Authorization: `Basic ${btoa(`${DEMO.user}:${DEMO.password}`)}` },
  });
  const { status, body } = await new Promise((resolve, reject) => {
    ws.once("open", () => reject(new Error("the upgrade was accepted")));
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (chunk) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
  });
  ws.on("error", () => {}); // the refused upgrade, already answered above
  assert.equal(status, 400);
  assert.match(body, /mutually exclusive/);
});

test("every example frame of the document is compared", () => {
  // The document has one example frame (the `newMessage` payload, checked above in
  // both encodings) and the connection table (`/v1/ws` → JSON text frames,
  // `?msgpackr=true` → msgpackr binary frames). herald's `connected`, `ping` and
  // `resyncRequired` frames are its own (SPEC §4.1) and use the same encodings.
  assert.equal(codeBlocks(doc, "json").length, 1, "one example frame in document 000");
  assert.match(doc, /\?msgpackr=true` \| msgpackr binary frames/);
});
