// Document 003 (the generic realtime protocol, herald's `/ws`): its TypeScript client
// class, taken from the document text and compiled unchanged with the real TypeScript
// compiler, runs against a real node; then every example frame of the document is sent
// (requests, verbatim) or provoked (answers and server frames) and compared field by
// field with what herald sends. Deliberate differences are named in DELIBERATE below.

import test from "node:test";
import assert from "node:assert/strict";
import { createHash, createHmac } from "node:crypto";
import ts from "typescript";
import WebSocket from "ws";
import { DEMO, codeBlocks, seed, startHerald } from "../herald.mjs";

const DOC = await seed("003");
/** How long an answer may take here; the document's client gives up after 30 s. */
const ANSWER_MS = 10_000;

/** A demo JWT (HS256 with the embedded demo secret) for user `sub`. */
function jwt(sub, claims = {}) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({
    sub,
    exp: Math.floor(Date.now() / 1000) + 3600,
    ...claims,
  })}`;
  return `${body}.${createHmac("sha256", DEMO.jwtSecret).update(body).digest("base64url")}`;
}

/** Rejects if `promise` does not settle within ANSWER_MS (instead of the client's 30 s). */
function within(promise, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ANSWER_MS} ms`)), ANSWER_MS);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/**
 * The document's "Basic TypeScript Client" code block (interface, class and usage
 * example), transpiled by the TypeScript compiler and evaluated with the browser globals
 * it uses: `WebSocket` (from the `ws` package: Node 20 has none), `console`, and a
 * `setTimeout` whose timers do not keep the test process alive (the class arms a 30 s
 * timer per request and never clears it).
 */
function documentClient({ WebSocketImpl = WebSocket, log = () => {} } = {}) {
  const blocks = codeBlocks(DOC, "typescript").filter((b) => b.includes("class RealtimeProtocolClient"));
  assert.equal(blocks.length, 1, "the document has one TypeScript client class");
  const { outputText, diagnostics } = ts.transpileModule(blocks[0], {
    compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.None },
    reportDiagnostics: true,
  });
  assert.deepEqual(diagnostics, [], "the document's TypeScript compiles");
  const console = {
    log: (...args) => log("log", args),
    warn: (...args) => log("warn", args),
    error: (...args) => log("error", args),
  };
  const unrefTimeout = (fn, ms) => {
    const timer = setTimeout(fn, ms);
    timer.unref();
    return timer;
  };
  return new Function(
    "WebSocket",
    "console",
    "setTimeout",
    `${outputText}\nreturn { RealtimeProtocolClient, main };`,
  )(WebSocketImpl, console, unrefTimeout);
}

/** A raw `/ws` connection that keeps every frame, for comparing frames with the document. */
class Raw {
  static async open(node, user, claims) {
    const raw = new Raw(new WebSocket(node.wsUrl(`/ws?token=${jwt(user, claims)}`)));
    await new Promise((resolve, reject) => {
      raw.ws.once("open", resolve);
      raw.ws.once("error", reject);
      raw.ws.once("unexpected-response", (_, res) => reject(new Error(`upgrade answered ${res.statusCode}`)));
    });
    return raw;
  }

  constructor(ws) {
    this.ws = ws;
    this.frames = [];
    this.waiters = [];
    ws.on("message", (data, binary) => {
      if (binary) throw new Error("herald sends /ws answers as text frames");
      this.frames.push(JSON.parse(data.toString()));
      for (const wake of this.waiters.splice(0)) wake();
    });
  }

  send(frame) {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /** The first frame (kept or new) matching `pred`; it is removed from the kept ones. */
  async take(what, pred = () => true) {
    const deadline = Date.now() + ANSWER_MS;
    for (;;) {
      const i = this.frames.findIndex(pred);
      if (i >= 0) return this.frames.splice(i, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} within ${ANSWER_MS} ms; got ${JSON.stringify(this.frames)}`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  type(kind, extra = () => true) {
    return this.take(`${kind} frame`, (f) => f.type === kind && extra(f));
  }

  close() {
    this.ws.close();
  }
}

// ---------------------------------------------------------------------------------------
// The document's example frames, found by their section heading and Request/Response label.

function examples() {
  const found = [];
  let heading = "";
  let label = "";
  const lines = DOC.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const h = /^#{2,4} (.*)$/.exec(line);
    if (h) [heading, label] = [h[1].trim(), ""];
    const l = /^\*\*(.*):\*\*$/.exec(line.trim());
    if (l) label = l[1];
    if (line.trim() === "```json") {
      const end = lines.indexOf(lines.slice(i + 1).find((x) => x.trim() === "```"), i + 1);
      const text = lines.slice(i + 1, end).join("\n");
      found.push({ name: label ? `${heading} / ${label}` : heading, text });
      i = end;
    }
  }
  return found;
}

/** What each example is, in the document's order (the test fails if the document changes). */
const EXAMPLES = [
  "1. Ping/Pong (Heartbeat) / Request",
  "1. Ping/Pong (Heartbeat) / Response",
  "2. Subscribe to Topics / Request",
  "2. Subscribe to Topics / Response",
  "3. Unsubscribe from Topics / Request",
  "3. Unsubscribe from Topics / Response",
  "4. Broadcast Message / Request",
  "4. Broadcast Message / Response",
  "5. Direct Message / Request",
  "5. Direct Message / Response (Success)",
  "5. Direct Message / Response (User Offline)",
  "1. Welcome Message",
  "2. Broadcast Delivery",
  "3. Direct Message Delivery",
  "4. System Notifications",
  "5. Presence Updates",
  "Error Message Format",
  "Token Refresh Flow",
  "Binary Response",
  "Custom Message Types",
  "Metadata Headers",
];

/**
 * Where herald deliberately sends something else than the example, and why. Anything not
 * listed here must match: every field of the example present in herald's frame, with the
 * same JSON type and nesting (herald may add fields).
 */
const DELIBERATE = {
  "5. Presence Updates": {
    differences: ["data.metadata.device: missing", "data.metadata.location: missing"],
    why: "herald knows no device or location of a user; Presence carries metadata {}",
  },
  "Error Message Format": {
    differences: ["data.details.field: missing", "data.details.context: missing"],
    why: "the document's details are placeholders; herald's details carry what is relevant to each error",
  },
  "Custom Message Types": {
    differences: ["answered by Error 503"],
    why: "X- types are forwarded as NATS requests on herald.v1.custom.<type>; the demo node runs the in-process bus, which has no responders",
  },
  "Metadata Headers": {
    differences: ["not JSON: a template with `{ ... }`"],
    why: "herald accepts top-level metadata on any client frame and ignores it",
  },
};

function jsonType(v) {
  return v === null ? "null" : Array.isArray(v) ? "array" : typeof v;
}

/** Paths where `got` lacks a field of `doc` or has it with another JSON type. */
function differences(doc, got, path = "") {
  if (jsonType(doc) !== jsonType(got)) {
    return [`${path || "frame"}: document ${jsonType(doc)}, herald ${jsonType(got)}`];
  }
  if (jsonType(doc) === "array") {
    return doc.length && got.length ? differences(doc[0], got[0], `${path}[0]`) : [];
  }
  if (jsonType(doc) !== "object") return [];
  return Object.keys(doc).flatMap((key) => {
    const at = path ? `${path}.${key}` : key;
    return key in got ? differences(doc[key], got[key], at) : [`${at}: missing`];
  });
}

// ---------------------------------------------------------------------------------------

test("document 003's TypeScript client: subscribe, broadcast and direct message resolve; from_user is read", async (t) => {
  const node = await startHerald();
  t.after(() => node.stop());
  const { RealtimeProtocolClient } = documentClient();
  const url = node.wsUrl("/ws");
  const alice = new RealtimeProtocolClient(url, jwt("alice"));
  const bob = new RealtimeProtocolClient(url, jwt("bob"));
  t.after(() => [alice, bob].forEach((c) => c.disconnect()));
  const broadcasts = [];
  const dms = [];
  bob.on("Broadcast", (data) => broadcasts.push(data));
  bob.on("DirectMessage", (data) => dms.push({ from_user: data.from_user, payload: data.payload }));
  await within(alice.connect(), "alice connects");
  await within(bob.connect(), "bob connects");

  const subscribed = await within(bob.subscribe(["chat.general", "notifications"]), "subscribe");
  assert.deepEqual(subscribed, {
    message_id: "msg_1",
    status: "subscribed",
    details: { topics: ["chat.general", "notifications"], active_subscriptions: 2 },
  });

  const ack = await within(alice.broadcast("chat.general", { message: "Hello from TypeScript client!" }), "broadcast");
  assert.equal(ack.error, undefined, JSON.stringify(ack));
  assert.equal(ack.message_id, "msg_1", "alice's first request");
  assert.equal(ack.status, "delivered");
  assert.equal(ack.recipients, 1, "bob");
  assert.equal(broadcasts.length, 1, "bob got it before alice's Ack");
  assert.equal(broadcasts[0].topic, "chat.general");
  assert.deepEqual(broadcasts[0].payload, { message: "Hello from TypeScript client!" });
  assert.equal(broadcasts[0].metadata.message_id, "msg_1", "the sender's id");

  const dm = await within(alice.sendDirectMessage("bob", { message: "Private message", attachments: [] }), "direct message");
  assert.equal(dm.error, undefined, JSON.stringify(dm));
  assert.equal(dm.message_id, "msg_2");
  assert.equal(dm.status, "delivered");
  assert.equal(dm.delivered_to.length, 1, "bob's one connection");
  assert.deepEqual(dms, [{ from_user: "alice", payload: { message: "Private message", attachments: [] } }]);
});

test("document 003's usage example main() runs unchanged (its URL and token pointed at the test node)", async (t) => {
  const node = await startHerald();
  t.after(() => node.stop());
  const sockets = [];
  // The example hard-codes ws://localhost:8081/ws and 'your-jwt-token', as a reader
  // would replace them; nothing else is substituted.
  class PointedWebSocket extends WebSocket {
    constructor(url, protocols) {
      assert.equal(url, "ws://localhost:8081/ws?token=your-jwt-token");
      super(node.wsUrl(`/ws?token=${jwt("user123")}`), protocols);
      sockets.push(this);
    }
  }
  t.after(() => sockets.forEach((s) => s.close()));
  const printed = [];
  const { main } = documentClient({
    WebSocketImpl: PointedWebSocket,
    log: (level, args) => printed.push({ level, args }),
  });
  await within(main(), "main()");
  const result = (label) => printed.find((p) => p.args[0] === label)?.args[1];
  assert.deepEqual(result("Subscription result:"), {
    message_id: "msg_1",
    status: "subscribed",
    details: { topics: ["chat.general", "notifications"], active_subscriptions: 2 },
  });
  const broadcast = result("Broadcast result:");
  assert.equal(broadcast.message_id, "msg_2");
  assert.equal(broadcast.status, "delivered");
  assert.equal(broadcast.recipients, 1, "the example's client is subscribed to chat.general itself");
  assert.equal(result("Received broadcast:")?.topic, "chat.general");
  assert.deepEqual(
    printed.filter((p) => p.level !== "log"),
    [],
    "no warnings (unhandled types) or errors",
  );
});

test("document 003's example frames match what herald sends", async (t) => {
  const node = await startHerald();
  t.after(() => node.stop());
  const found = examples();
  assert.deepEqual(
    found.map((e) => e.name),
    EXAMPLES,
    "the document's example frames, in order",
  );
  const example = Object.fromEntries(
    found.map((e) => {
      try {
        return [e.name, JSON.parse(e.text)];
      } catch {
        return [e.name, e.text];
      }
    }),
  );
  const compared = {};
  /** Compares herald's frame with the example `name`; a difference fails unless DELIBERATE names it. */
  const compare = (name, got) => {
    compared[name] = true;
    assert.deepEqual(differences(example[name], got), DELIBERATE[name]?.differences ?? [], `${name}: ${JSON.stringify(got)}`);
    return got;
  };
  const sockets = [];
  const open = async (user, claims) => {
    const raw = await Raw.open(node, user, claims);
    sockets.push(raw);
    return raw;
  };
  t.after(() => sockets.forEach((s) => s.close()));

  // Welcome.
  const user123 = await open("user123");
  const welcome = compare("1. Welcome Message", await user123.type("Status"));
  assert.equal(welcome.data.status, "connected");
  assert.equal(welcome.data.details.protocol_version, "1.0");
  assert.deepEqual(welcome.data.details.features, example["1. Welcome Message"].data.details.features);
  const serverTime = welcome.data.details.server_time;
  assert.ok(Math.abs(serverTime - Date.now() / 1000) < 60, `server_time is in seconds, like 1234567890: ${serverTime}`);

  // Ping/Pong: the timestamp comes back as sent.
  user123.send(example["1. Ping/Pong (Heartbeat) / Request"]);
  const pong = compare("1. Ping/Pong (Heartbeat) / Response", await user123.type("Pong"));
  assert.equal(pong.data.timestamp, 1234567890);

  // Subscribe/Unsubscribe: the document's answers, value for value.
  user123.send(example["2. Subscribe to Topics / Request"]);
  const subscribed = compare("2. Subscribe to Topics / Response", await user123.type("Status"));
  assert.deepEqual(subscribed.data, example["2. Subscribe to Topics / Response"].data);
  user123.send(example["3. Unsubscribe from Topics / Request"]);
  const unsubscribed = compare("3. Unsubscribe from Topics / Response", await user123.type("Status"));
  assert.deepEqual(unsubscribed.data, example["3. Unsubscribe from Topics / Response"].data);
  // Without an id nothing else answers (an Ack answers only requests with an id).
  user123.send({ type: "Ping", data: { timestamp: 1 } });
  assert.equal((await user123.take("next frame")).type, "Pong", "no Ack for Subscribe without id");

  // Broadcast: the Ack carries the request's id; the subscriber gets the delivery.
  const listener = await open("listener");
  await listener.type("Status");
  listener.send({ type: "Subscribe", data: { topics: ["chat.general", "presence.user789"] }, id: "s1" });
  await listener.type("Status", (f) => f.id === "s1");
  await listener.type("Ack", (f) => f.data.message_id === "s1");
  user123.send(example["4. Broadcast Message / Request"]);
  const ack = compare("4. Broadcast Message / Response", await user123.type("Ack"));
  assert.equal(ack.data.message_id, "msg_123456");
  assert.equal(ack.data.status, "delivered");
  assert.equal(ack.data.recipients, 1);
  const delivery = compare("2. Broadcast Delivery", await listener.type("Broadcast"));
  assert.equal(delivery.data.topic, "chat.general");
  assert.deepEqual(delivery.data.payload, example["2. Broadcast Delivery"].data.payload);
  assert.ok(Math.abs(delivery.data.metadata.sent_at - Date.now() / 1000) < 60, "sent_at in seconds");

  // Direct message to an offline user: 404, queued; delivered when they connect.
  user123.send(example["5. Direct Message / Request"]);
  const offline = compare("5. Direct Message / Response (User Offline)", await user123.type("Error"));
  assert.equal(offline.data.code, 404);
  assert.ok(offline.data.message.startsWith("User user456 not found or not connected"), offline.data.message);
  assert.equal(offline.data.details.message_id, "dm_789012");
  assert.equal(offline.data.details.queued, true);
  const user456 = await open("user456");
  const user456Welcome = await user456.type("Status");
  const queued = compare("3. Direct Message Delivery", await user456.type("DirectMessage"));
  assert.equal(queued.data.from_user, "user123");
  assert.deepEqual(queued.data.payload, example["3. Direct Message Delivery"].data.payload);
  assert.equal(queued.data.metadata.message_id, "dm_789012", "the sender's id");

  // The same request again (ids are the client's, not deduplicated): delivered now.
  user123.send(example["5. Direct Message / Request"]);
  const dmAck = compare("5. Direct Message / Response (Success)", await user123.type("Ack"));
  assert.equal(dmAck.data.message_id, "dm_789012");
  assert.deepEqual(dmAck.data.delivered_to, [user456Welcome.data.details.connection_id]);
  assert.equal((await user456.type("DirectMessage")).data.from_user, "user123");

  // Presence: user789's first session.
  await open("user789");
  const presence = compare("5. Presence Updates", await listener.type("Presence"));
  assert.equal(presence.data.user_id, "user789");
  assert.equal(presence.data.status, "online");
  assert.ok(Math.abs(presence.data.last_seen - Date.now() / 1000) < 60, "last_seen in seconds");

  // Notification: a backend publishes the document's frame to the user; it arrives as is.
  const notification = example["4. System Notifications"];
  await node.publish({ subject: "herald.v1.user.user456", payload: notification });
  const got = compare("4. System Notifications", await user456.type("Notification"));
  for (const [key, value] of Object.entries(notification.data)) assert.deepEqual(got.data[key], value, key);

  // Errors.
  user123.send({ type: "Dance", data: {}, id: "e1" });
  const error = compare("Error Message Format", await user123.type("Error"));
  assert.equal(error.data.code, 400);
  assert.equal(error.id, "e1");

  // AuthStatus: a token expiring within realtime.token_expiry_warning is warned at once.
  const exp = Math.floor(Date.now() / 1000) + 40;
  const expiring = await open("expiring", { exp });
  const auth = compare("Token Refresh Flow", await expiring.type("AuthStatus"));
  assert.equal(auth.data.status, "token_expiring");
  assert.equal(auth.data.expires_at, exp, "seconds, the JWT's exp");
  assert.equal(auth.data.refresh_required, true);

  // Binary: a 1024-byte file transfer.
  const payload = Buffer.alloc(1024, 7);
  const header = Buffer.alloc(5);
  header[0] = 0x03;
  header.writeUInt32BE(payload.length, 1);
  user123.ws.send(Buffer.concat([header, payload]), { binary: true });
  const binary = compare("Binary Response", await user123.type("Status", (f) => f.data.status === "binary_received"));
  assert.deepEqual(binary.data.details, {
    size: 1024,
    type: "file_transfer",
    checksum: `sha256:${createHash("sha256").update(payload).digest("hex")}`,
  });

  // Custom X- type (deliberate: NATS only) and top-level metadata (accepted, ignored).
  user123.send(example["Custom Message Types"]);
  const custom = await user123.type("Error");
  compared["Custom Message Types"] = true;
  assert.equal(custom.data.code, 503);
  assert.match(custom.data.message, /NATS/);
  assert.equal(typeof example["Metadata Headers"], "string", DELIBERATE["Metadata Headers"].differences[0]);
  user123.send({
    type: "Broadcast",
    data: { topic: "chat.general", payload: {} },
    id: "meta1",
    metadata: { priority: "high", ttl: 3600, encryption: "aes256", compression: "gzip" },
  });
  assert.equal((await user123.type("Ack")).data.message_id, "meta1");
  compared["Metadata Headers"] = true;

  // Requests were sent verbatim above; every answer and server frame was compared.
  for (const name of EXAMPLES.filter((n) => !n.endsWith("/ Request"))) {
    assert.ok(compared[name], `${name} was compared`);
  }
  for (const [name, { differences: named, why }] of Object.entries(DELIBERATE)) {
    t.diagnostic(`deliberate difference, ${name}: ${named.join("; ")} (${why})`);
  }
});
