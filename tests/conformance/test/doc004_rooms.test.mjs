// Document 004 (rooms, `/api/v1/ws/connect`): its own "Connection Flow" JavaScript runs
// unchanged against a real node started from the embedded demo config (`herald serve`,
// no flags); only the URL's host/port and the token are substituted. Node 20 has no
// global WebSocket, so the browser API comes from the `ws` package. Every example frame
// of the document is compared with what herald sends; where herald deliberately differs
// (SPEC §4.4 or an addition), the difference is named in DIFFERENCES and asserted.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import WS from "ws";

import { DEMO, codeBlocks, seed, startHerald } from "../herald.mjs";

const doc = await seed("004");

/** The document's client code and example frames, read from its text. */
const FLOW = codeBlocks(doc, "javascript")[0];
const [WELCOME, CLIENT_ENVELOPE, EVENT_ENVELOPE, ERROR_FORMAT] = codeBlocks(doc, "json").map((block) =>
  JSON.parse(block),
);
/** `- Join room: `{...}`` and its siblings in "Client → Server Messages". */
const CLIENT = Object.fromEntries(
  [...doc.matchAll(/^- (Join room|Leave room|Send message|Ping): `(.+)`$/gm)].map((m) => [m[1], JSON.parse(m[2])]),
);
/** "4401 Authentication Failed" ... in "Error Codes". */
const CLOSE_CODES = [...doc.matchAll(/^- (4\d\d\d) (.+)$/gm)].map((m) => Number(m[1]));

/** Where herald's frames deliberately differ from the document's examples, and why. */
const DIFFERENCES = {
  seq: "every room event carries `seq`, its bus stream sequence (SPEC §5), the same on every node",
  sender_id: "`sender` is the username as in the document; `sender_id` beside it is the user id (two users may share a name)",
  errorExtras: "error events keep `data.error` and add `data.code` (machine-readable), `room` and `sender: null` (the event envelope)",
  envelopeTimestamp:
    "the event envelope example writes `2025-11-13T12:00:00Z`; herald writes every timestamp as the welcome example does, with six fractional digits",
  userRooms: "rooms `user:<id>` are accepted beside channel/project/task (the document's access section names `user:42`)",
  unreachable4500: "4500 (internal error) needs a failing auth backend; tests/tests/e2e/rooms.rs covers it",
};

/** The document's timestamp shape: the welcome example's `2025-11-13T12:00:00.000000Z`. */
const TIMESTAMP = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;

function b64url(data) {
  return Buffer.from(data).toString("base64url");
}

/** A demo JWT: HS256 with the embedded config's secret, as any backend would mint it. */
function demoJwt(claims) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims }));
  const sig = createHmac("sha256", DEMO.jwtSecret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/**
 * Runs the document's Connection Flow code with `token` against `node`: its `console`
 * is captured (every frame it logs, parsed by the example itself), `WebSocket` is `ws`.
 */
function runFlow(node, token) {
  const source = FLOW.replace('"eyJhbGc..."', JSON.stringify(token)).replace(
    "ws://localhost:8000",
    node.wsUrl(""),
  );
  assert.notEqual(source, FLOW, "the example's token and host were substituted");
  const logs = [];
  const sockets = [];
  class WebSocket extends WS {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const console = { log: (item) => logs.push(item), error: (item) => logs.push({ error: item }) };
  new Function("WebSocket", "console", source)(WebSocket, console);
  return {
    ws: sockets[0],
    logs,
    send: (frame) => sockets[0].send(JSON.stringify(frame)),
    /** Resolves to the first logged item satisfying `pred` after `from` (a log index). */
    async next(what, pred, from = 0) {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const found = logs.slice(from).find(pred);
        if (found !== undefined) return found;
        if (Date.now() > deadline) assert.fail(`no ${what} within 10 s; logged: ${JSON.stringify(logs)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

const frame = (type, room) => (item) => typeof item === "object" && item?.type === type && (!room || item.room === room);
const closed = (code) => (item) => typeof item === "string" && item.startsWith(`Closed: ${code} - `);

/** Asserts `actual` has every key of the document's `example`, and only `extra` besides. */
function sameKeys(actual, example, extra = []) {
  const want = new Set([...Object.keys(example), ...extra]);
  assert.deepEqual(new Set(Object.keys(actual)), want, `keys of ${JSON.stringify(actual)}`);
}

const node = await startHerald();
after(() => node.stop());

test("the document's example frames parse and are what this test compares against", (t) => {
  for (const [what, why] of Object.entries(DIFFERENCES)) t.diagnostic(`deliberate difference ${what}: ${why}`);
  assert.ok(FLOW.includes("new WebSocket("), "the Connection Flow block");
  assert.deepEqual(Object.keys(CLIENT).sort(), ["Join room", "Leave room", "Ping", "Send message"]);
  assert.equal(CLIENT_ENVELOPE.type, "join_room");
  assert.match(WELCOME.timestamp, TIMESTAMP);
  assert.deepEqual(CLOSE_CODES, [4401, 4403, 4429, 4500]);
});

test("the document's flow: connect, join, message reaches a second connection, ping, error, backend event, leave", async () => {
  // The document's welcome shows user 12345 called alice: a numeric `sub` stays a number.
  const alice = runFlow(node, demoJwt({ sub: 12345, username: "alice" }));
  const bob = runFlow(node, demoJwt({ sub: 67890, username: "bob" }));
  await alice.next("Connected", (l) => l === "Connected");

  const welcome = await alice.next("welcome", frame("connected"));
  sameKeys(welcome, WELCOME);
  assert.deepEqual(welcome.data, WELCOME.data, "the document's welcome data, field by field");
  assert.match(welcome.timestamp, TIMESTAMP);
  await bob.next("bob's welcome", frame("connected"));

  // Join with the document's own client frames (the envelope's `data` is optional).
  const room = CLIENT["Join room"].room;
  bob.send(CLIENT["Join room"]);
  await bob.next("bob's user_joined", frame("user_joined", room));
  alice.send({ ...CLIENT_ENVELOPE, room });
  const joined = await bob.next("alice's user_joined at bob", (l) => frame("user_joined", room)(l) && l.sender === "alice");
  sameKeys(joined, EVENT_ENVELOPE, ["seq", "sender_id"]); // DIFFERENCES.seq, .sender_id
  assert.deepEqual(joined.data, { user_id: 12345, username: "alice" });
  assert.equal(typeof joined.sender, typeof EVENT_ENVELOPE.sender, "sender is the username string");
  assert.match(joined.timestamp, TIMESTAMP); // DIFFERENCES.envelopeTimestamp
  assert.ok(!isNaN(Date.parse(EVENT_ENVELOPE.timestamp)) && !isNaN(Date.parse(joined.timestamp)));
  await alice.next("alice's own user_joined", frame("user_joined", room));

  // The document's send_message reaches the second connection.
  const mark = bob.logs.length;
  alice.send(CLIENT["Send message"]);
  const message = await bob.next("the message at bob", frame("message", room), mark);
  sameKeys(message, EVENT_ENVELOPE, ["seq", "sender_id"]);
  assert.deepEqual(message.data, CLIENT["Send message"].data);
  assert.equal(message.sender, "alice");
  assert.equal(message.sender_id, 12345);
  assert.match(message.timestamp, TIMESTAMP);

  // Ping: the document shows no pong frame; herald answers {type: "pong", data, timestamp}.
  alice.send(CLIENT.Ping);
  const pong = await alice.next("pong", frame("pong"));
  assert.match(pong.timestamp, TIMESTAMP);

  // An invalid room format is an error event in the document's error format.
  alice.send({ ...CLIENT["Join room"], room: "team:1" });
  const error = await alice.next("error", frame("error"));
  sameKeys(error, ERROR_FORMAT, ["room", "sender"]); // DIFFERENCES.errorExtras
  assert.equal(typeof error.data.error, typeof ERROR_FORMAT.data.error);
  assert.match(error.data.error, /team:1/, "says what was wrong");
  assert.equal(error.data.code, "bad_room");
  assert.match(error.timestamp, TIMESTAMP);

  // A backend event published to the room (herald.v1.room.<prefix>.<id>).
  const [prefix, id] = room.split(":");
  await node.publish({
    subject: `herald.v1.room.${prefix}.${id}`,
    payload: { type: "task.created", data: { task_id: 7, title: "Ship rooms" }, sender: "backend" },
  });
  const task = await bob.next("task.created", frame("task.created", room));
  sameKeys(task, EVENT_ENVELOPE, ["seq"]);
  assert.equal(task.sender, "backend");

  // The document's leave_room: the other member gets user_left.
  alice.send(CLIENT["Leave room"]);
  const left = await bob.next("user_left", frame("user_left", room));
  sameKeys(left, EVENT_ENVELOPE, ["seq", "sender_id"]);
  assert.equal(left.sender, "alice");

  // `user:<id>` rooms (DIFFERENCES.userRooms).
  alice.send({ type: "join_room", room: "user:12345" });
  await alice.next("own user room", frame("user_joined", "user:12345"));

  alice.ws.close();
  bob.ws.close();
  await alice.next("the example's close log", (l) => typeof l === "string" && l.startsWith("Closed: "));
});

test("the document's close codes reach the example's onclose: 4401, 4403, 4429", async () => {
  const bad = runFlow(node, "not-a-jwt");
  await bad.next("4401", closed(4401));

  // With a `rooms` claim, a room outside it is refused (the demo opens rooms only to
  // tokens without the claim: rooms.default_allow).
  const limited = runFlow(node, demoJwt({ sub: 5, username: "carol", rooms: ["project:123"] }));
  await limited.next("welcome", frame("connected"));
  limited.send({ type: "join_room", room: "project:123" });
  await limited.next("joined project:123", frame("user_joined", "project:123"));
  limited.send(CLIENT["Join room"]);
  await limited.next("4403", closed(4403));

  // "4429 Too Many Connections (limit 5)".
  const token = demoJwt({ sub: 6, username: "dave" });
  const five = [];
  for (let n = 0; n < 5; n++) {
    const flow = runFlow(node, token);
    await flow.next("welcome", frame("connected"));
    five.push(flow);
  }
  const sixth = runFlow(node, token);
  await sixth.next("4429", closed(4429));
  for (const flow of five) flow.ws.close();
});
