// Documents 001 and 002 (Apache James ADR 47 / JAMES-3491: JMAP push over WebSockets,
// implementing RFC 8887) against `/jmap/ws`. The documents carry no frames of their own
// and defer to RFC 8887, so this drives herald with RFC 8887 §5's example exchange,
// frame by frame, and compares each answer with the RFC's; the James sequence (Bob
// enables Email and Mailbox push, a mail arrives, one StateChange names both types) is
// the "new email" step. Where herald differs on purpose the test says so.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, before, test } from "node:test";

import WebSocket from "ws";

import { DEMO, seed, startHerald } from "../herald.mjs";

/** RFC 8887 §5, "Examples": the frames the client sends and what the server answers. */
const RFC8887 = {
  enable: { "@type": "WebSocketPushEnable", dataTypes: ["Mailbox", "Email"], pushState: "aaa" },
  enableAnswer: { "@type": "StateChange", changed: { a456: { Mailbox: "d35ecb040aab" } }, pushState: "bbb" },
  request: {
    "@type": "Request",
    id: "R1",
    using: ["urn:ietf:params:jmap:core"],
    methodCalls: [["Core/echo", { hello: true, high: 5 }, "b3ff"]],
  },
  response: {
    "@type": "Response",
    requestId: "R1",
    methodResponses: [["Core/echo", { hello: true, high: 5 }, "b3ff"]],
  },
  notJson: "The quick brown fox jumps over the lazy dog.",
  notJsonAnswer: {
    "@type": "RequestError",
    requestId: null,
    type: "urn:ietf:params:jmap:error:notJSON",
    status: 400,
    detail: "The request did not parse as I-JSON.",
  },
  // "[A new email is received]"
  newMailAnswer: { "@type": "StateChange", changed: { a123: { Email: "0af7a512ce70" } }, pushState: "ccc" },
};

/** Where herald's answers differ from the RFC's example on purpose, and why. */
const DIFFERENCES = {
  accountId: "the account key is the alias id (one session is one account), not the RFC's a456/a123",
  states: "state strings and pushState are JetStream sequences (the same on every node), not opaque hashes",
  sessionState: "every Response carries sessionState (RFC 8620 §3.4 requires it; the RFC 8887 example leaves it out); herald serves no data, so it is \"0\"",
  detail: "RequestError.detail is herald's own wording saying what to fix",
  unknownPushState: "a pushState herald did not issue (\"aaa\") reports every asked-for type as changed, so the client refetches",
  newMailTypes: "newMessage changes Email, Mailbox, Thread and EmailDelivery (SPEC §4.2); the client asked for Mailbox and Email, so both are pushed, as James does (ADR 47 step 4)",
};

let node;

before(async () => {
  // The documents this follows exist (the test says which it checks).
  for (const n of ["001", "002"]) assert.match(await seed(n), /RFC-8887/);
  node = await startHerald();
});

after(async () => {
  await node?.stop();
});

/** A demo JWT (HS256 with the embedded demo secret) for the demo alias. */
function demoJwt() {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub: "demo", aliases: [DEMO.aliasId], exp: Math.floor(Date.now() / 1000) + 3600 });
  const sig = createHmac("sha256", DEMO.jwtSecret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** Opens `/jmap/ws` as the RFC's handshake does (subprotocol `jmap`, authenticated). */
async function open() {
  const ws = new WebSocket(node.wsUrl("/jmap/ws"), "jmap", {
    headers: { Authorization: `Bearer ${demoJwt()}`, Origin: "https://www.example.com" },
  });
  const frames = [];
  ws.on("message", (data, isBinary) => frames.push(isBinary ? data : JSON.parse(data.toString())));
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
    ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade answered ${res.statusCode}`)));
  });
  let read = 0;
  const next = async (timeoutMs = 10_000) => {
    const deadline = Date.now() + timeoutMs;
    while (frames.length <= read) {
      if (Date.now() > deadline) throw new Error(`no frame within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return frames[read++];
  };
  const nothingFor = async (ms) => {
    await new Promise((r) => setTimeout(r, ms));
    assert.equal(frames.length, read, `expected no frame, got ${JSON.stringify(frames.slice(read))}`);
  };
  return { ws, next, nothingFor };
}

/** A StateChange as the RFC shapes it: same keys, one account, string states. */
function assertStateChangeShape(frame, example) {
  assert.deepEqual(Object.keys(frame).sort(), Object.keys(example).sort(), "StateChange keys as in RFC 8887 §5");
  assert.equal(frame["@type"], "StateChange");
  assert.deepEqual(Object.keys(frame.changed), [DEMO.aliasId], DIFFERENCES.accountId);
  for (const state of Object.values(frame.changed[DEMO.aliasId])) assert.equal(typeof state, "string", DIFFERENCES.states);
  assert.equal(typeof frame.pushState, "string");
}

test("RFC 8887 §5: the handshake answers Sec-WebSocket-Protocol: jmap", async () => {
  const { ws } = await open();
  assert.equal(ws.protocol, "jmap");
  ws.close();
});

test("RFC 8887 §5, frame by frame: push enable, echo, not-JSON, a new email, disable, close", async () => {
  const { ws, next, nothingFor } = await open();

  // WebSocketPushEnable with the RFC's pushState "aaa" → one StateChange.
  ws.send(JSON.stringify(RFC8887.enable));
  const enabled = await next();
  assertStateChangeShape(enabled, RFC8887.enableAnswer);
  assert.deepEqual(Object.keys(enabled.changed[DEMO.aliasId]).sort(), ["Email", "Mailbox"], DIFFERENCES.unknownPushState);

  // Request R1 (Core/echo) → Response R1.
  ws.send(JSON.stringify(RFC8887.request));
  const response = await next();
  const { sessionState, ...rest } = response;
  assert.deepEqual(rest, RFC8887.response, "Response as in RFC 8887 §5");
  assert.equal(sessionState, "0", DIFFERENCES.sessionState);

  // Not JSON → RequestError notJSON with requestId null.
  ws.send(RFC8887.notJson);
  const error = await next();
  const { detail, ...errorRest } = error;
  const { detail: _rfcDetail, ...rfcRest } = RFC8887.notJsonAnswer;
  assert.deepEqual(errorRest, rfcRest, "RequestError as in RFC 8887 §5 (requestId: null)");
  assert.equal(typeof detail, "string", DIFFERENCES.detail);
  assert.match(detail, /JSON/);

  // [A new email is received] → StateChange for Email (and Mailbox, also asked for).
  const published = await node.publish({
    aliasId: DEMO.aliasId,
    payload: { event: "newMessage", mailbox: "INBOX", message: { uid: 1 } },
  });
  const pushed = await next();
  assertStateChangeShape(pushed, RFC8887.newMailAnswer);
  const states = pushed.changed[DEMO.aliasId];
  assert.deepEqual(Object.keys(states).sort(), ["Email", "Mailbox"], DIFFERENCES.newMailTypes);
  assert.equal(states.Email, String(published.seq), DIFFERENCES.states);
  assert.equal(pushed.pushState, String(published.seq));

  // WebSocketPushDisable → no more pushes; requests are still answered.
  ws.send(JSON.stringify({ "@type": "WebSocketPushDisable" }));
  await new Promise((r) => setTimeout(r, 200));
  await node.publish({ aliasId: DEMO.aliasId, payload: { event: "flagsUpdated", mailbox: "INBOX", uids: [1] } });
  await nothingFor(1_000);
  ws.send(JSON.stringify(RFC8887.request));
  assert.equal((await next())["@type"], "Response");

  // Enabling again with the last pushState replays exactly what was missed.
  ws.send(JSON.stringify({ "@type": "WebSocketPushEnable", dataTypes: null, pushState: pushed.pushState }));
  const caughtUp = await next();
  assert.deepEqual(Object.keys(caughtUp.changed[DEMO.aliasId]).sort(), ["Email", "Mailbox", "Thread"], "flagsUpdated's types");

  // WS_CLOSE / WS_CLOSE: the server answers the client's close.
  const closed = new Promise((resolve) => ws.once("close", (code) => resolve(code)));
  ws.close(1000);
  assert.equal(await closed, 1000);
});

test("every RFC 8887 §5 frame is compared and every difference is named", () => {
  // The handshake is its own test above; these are the seven WS_DATA frames of §5.
  assert.equal(Object.keys(RFC8887).length, 7, "enable, its answer, request, response, not-JSON, its answer, new mail answer");
  for (const [what, why] of Object.entries(DIFFERENCES)) assert.ok(why.length > 20, `${what} has a reason`);
});
