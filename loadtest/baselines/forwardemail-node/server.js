'use strict';
// Reference implementation of Forward Email's published real-time architecture
// (WEBSOCKET_IMPLEMENTATION.md of forwardemail.net), reduced to what the load test
// exercises: one Node.js process, `ws` on /v1/ws with auth during the upgrade (Basic
// API token + ?alias_id=, or alias address + password from a static map), one Redis
// pub/sub channel carrying msgpackr envelopes {aliasId, payload} (or {broadcast: true,
// payload}), routed by aliasId to the sessions of that alias, delivered as JSON text
// frames or, with ?msgpackr=true, msgpackr binary frames. 30 s ping/pong keepalive;
// client frames are ignored; frames over 1 KiB close the session (1009).
//
// Environment: HOST (127.0.0.1), PORT (8090), REDIS_URL (redis://127.0.0.1:6379),
// WS_REDIS_CHANNEL_NAME (herald:loadtest:ws), AUTH_FILE (JSON, see README.md); without
// AUTH_FILE the token API_TOKEN (herald-demo-token) covers aliases
// ${ALIAS_PREFIX}0000… (ALIAS_PREFIX a, ALIAS_COUNT 1000).

const http = require('node:http');
const fs = require('node:fs');
const { WebSocketServer } = require('ws');
const Redis = require('ioredis');
const { Packr, Unpackr } = require('msgpackr');

const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT || 8090);
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const CHANNEL = process.env.WS_REDIS_CHANNEL_NAME || 'herald:loadtest:ws';
const KEEPALIVE_MS = 30_000;
const MAX_CLIENT_FRAME = 1024;

const packr = new Packr({ useRecords: false });
// 64-bit integers (e.g. microsecond timestamps) as JavaScript numbers, not BigInt, so
// JSON.stringify can encode them.
const unpackr = new Unpackr({ useRecords: false, int64AsType: 'number' });

// Static auth map: tokens -> alias ids; alias address -> { password, id }.
function loadAuth() {
  if (process.env.AUTH_FILE) {
    const auth = JSON.parse(fs.readFileSync(process.env.AUTH_FILE, 'utf8'));
    return {
      tokens: new Map(Object.entries(auth.tokens || {}).map(([t, ids]) => [t, new Set(ids)])),
      aliases: new Map(Object.entries(auth.aliases || {}))
    };
  }
  const prefix = process.env.ALIAS_PREFIX || 'a';
  const count = Number(process.env.ALIAS_COUNT || 1000);
  const digits = Math.max(4, String(Math.max(count - 1, 0)).length);
  const ids = new Set();
  for (let i = 0; i < count; i++) ids.add(prefix + String(i).padStart(digits, '0'));
  return {
    tokens: new Map([[process.env.API_TOKEN || 'herald-demo-token', ids]]),
    aliases: new Map()
  };
}
const auth = loadAuth();

// aliasId -> Set of sockets; every socket (for broadcasts).
const byAlias = new Map();
const everyone = new Set();

function refuse(socket, status, reason) {
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\n` +
      `Content-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(reason)}\r\n\r\n${reason}`
  );
}

// -> { aliasId } | { status, reason }
function authenticate(request, url) {
  for (const key of ['token', 'username', 'password']) {
    if (url.searchParams.has(key)) return { status: 400, reason: `credentials in the query string (${key})` };
  }
  const header = request.headers.authorization || '';
  if (!header.startsWith('Basic ')) return { status: 401, reason: 'Basic credentials required' };
  const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  const user = colon === -1 ? decoded : decoded.slice(0, colon);
  const password = colon === -1 ? '' : decoded.slice(colon + 1);
  const alias = auth.aliases.get(user);
  if (alias) {
    return alias.password === password ? { aliasId: alias.id } : { status: 401, reason: 'bad credentials' };
  }
  const ids = auth.tokens.get(user);
  if (!ids) return { status: 401, reason: 'bad credentials' };
  const aliasId = url.searchParams.get('alias_id');
  if (!aliasId) return { status: 400, reason: 'alias_id is required with an API token' };
  if (!ids.has(aliasId)) return { status: 403, reason: 'alias not allowed for this token' };
  return { aliasId };
}

const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_CLIENT_FRAME, perMessageDeflate: false });

function attach(ws, aliasId, msgpack) {
  ws.aliasId = aliasId;
  ws.msgpack = msgpack;
  ws.isAlive = true;
  let set = byAlias.get(aliasId);
  if (!set) byAlias.set(aliasId, (set = new Set()));
  set.add(ws);
  everyone.add(ws);
  ws.on('pong', () => {
    ws.isAlive = true;
  });
  ws.on('message', () => {}); // read-only channel
  ws.on('error', () => {});
  ws.on('close', () => {
    everyone.delete(ws);
    set.delete(ws);
    if (set.size === 0) byAlias.delete(aliasId);
  });
  send(ws, { event: 'connected', aliasId }, null);
}

// `cache` holds the payload encoded once per format for all recipients of one message.
function send(ws, payload, cache) {
  if (ws.readyState !== 1) return;
  if (ws.msgpack) {
    const frame = cache ? (cache.bin ||= packr.pack(payload)) : packr.pack(payload);
    ws.send(frame, { binary: true });
  } else {
    const frame = cache ? (cache.text ||= JSON.stringify(payload)) : JSON.stringify(payload);
    ws.send(frame);
  }
}

const server = http.createServer((req, res) => {
  if (req.url === '/readyz') {
    res.writeHead(200, { 'Content-Type': 'text/plain' }).end('ready\n');
    return;
  }
  res.writeHead(404).end();
});

server.on('upgrade', (request, socket, head) => {
  const url = new URL(request.url, 'http://localhost');
  if (url.pathname !== '/v1/ws') return refuse(socket, 404, 'not found');
  const result = authenticate(request, url);
  if (!result.aliasId) return refuse(socket, result.status, result.reason);
  const msgpack = url.searchParams.get('msgpackr') === 'true';
  wss.handleUpgrade(request, socket, head, (ws) => attach(ws, result.aliasId, msgpack));
});

const keepalive = setInterval(() => {
  for (const ws of everyone) {
    if (!ws.isAlive) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.ping();
    send(ws, { event: 'ping' }, null);
  }
}, KEEPALIVE_MS);

const subscriber = new Redis(REDIS_URL, { lazyConnect: true });
subscriber.on('messageBuffer', (_channel, message) => {
  let envelope;
  try {
    envelope = unpackr.unpack(message);
  } catch (error) {
    console.error(`undecodable message on ${CHANNEL}: ${error.message}`);
    return;
  }
  const { aliasId, payload, broadcast } = envelope || {};
  if (!payload || typeof payload !== 'object') return;
  const targets = broadcast ? everyone : byAlias.get(aliasId);
  if (!targets) return;
  const cache = {};
  try {
    for (const ws of targets) send(ws, payload, cache);
  } catch (error) {
    console.error(`cannot deliver a message for ${aliasId}: ${error.message}`);
  }
});

async function main() {
  await subscriber.connect();
  await subscriber.subscribe(CHANNEL);
  server.listen(PORT, HOST, () => {
    console.log(`forwardemail-node reference listening on ws://${HOST}:${PORT}/v1/ws, redis channel ${CHANNEL}`);
  });
}

function shutdown() {
  clearInterval(keepalive);
  for (const ws of everyone) ws.close(1001, 'shutting down');
  server.close();
  subscriber.disconnect();
  setTimeout(() => process.exit(0), 200).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
