// herald-client: one WebSocket client for herald's four dialects that reconnects
// with backoff across URLs, resumes without loss or duplicates, detects dead
// connections, and authenticates the way browsers can.
//
// No runtime imports: this file compiles to a single ESM module that browsers load
// as is. msgpackr is loaded only for `format: "msgpackr"` (or passed in).

import type {
  Ack,
  ForwardEmailNotification,
  JmapStateChange,
  RealtimeFrame,
  RoomEvent,
} from "./types.js";

export type * from "./types.js";

/** The four dialects, by endpoint: `/v1/ws`, `/ws`, `/jmap/ws`, `/api/v1/ws/connect`. */
export type Dialect = "v1" | "ws" | "jmap" | "rooms";

/** Credentials. A `jwt` function is called again when the server says the token expired. */
export type Auth =
  | { user: string; password: string }
  | { token: string; aliasId: string }
  | { jwt: string | (() => Promise<string> | string); aliasId?: string };

/** How credentials travel: HTTP headers (Node's `ws`) or, in browsers, what a page can send. */
export type AuthTransport = "header" | "browser";

/** Reconnect delays: attempt n waits a random time in [0, min(maxMs, initialMs·2ⁿ)] (full jitter). */
export interface BackoffOptions {
  /** First ceiling in ms (default 500). */
  initialMs?: number;
  /** Largest ceiling in ms (default 30 000). */
  maxMs?: number;
  /** Give up after this many failed attempts in a row (default: never). */
  maxAttempts?: number;
}

/** The smallest WebSocket surface the client uses (browsers' and `ws`'s both have it). */
export interface WebSocketLike {
  /** 0 connecting, 1 open, 2 closing, 3 closed. */
  readonly readyState: number;
  /** Negotiated subprotocol. */
  readonly protocol: string;
  /** `"arraybuffer"` for binary frames. */
  binaryType: string;
  /** Sends a text frame. */
  send(data: string): void;
  /** Starts the closing handshake. */
  close(code?: number, reason?: string): void;
  /** Open handler. */
  onopen: ((ev: unknown) => void) | null;
  /** Message handler. */
  onmessage: ((ev: { data: unknown }) => void) | null;
  /** Close handler. */
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  /** Error handler. */
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor: the browser's, or `ws` (which also takes headers). */
export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: { headers?: Record<string, string> },
) => WebSocketLike;

/** A MessagePack decoder such as msgpackr's `Decoder` (records included). */
export interface MsgpackDecoder {
  /** Decodes one frame. */
  unpack(data: Uint8Array): unknown;
}

/** Options of {@link HeraldClient}. */
export interface HeraldClientOptions {
  /** One or several endpoint URLs of the same dialect; rotated on reconnect. */
  urls: string | string[];
  /** The dialect (default: from the first URL's path, else `v1`). */
  dialect?: Dialect;
  /** Credentials (none: anonymous `/v1/ws`, when the node allows it). */
  auth?: Auth;
  /** `/v1/ws` only: JSON text frames or msgpackr binary frames (`?msgpackr=true`). */
  format?: "json" | "msgpackr";
  /** Decoder for `format: "msgpackr"` (default: `new (await import("msgpackr")).Decoder()`). */
  msgpackr?: MsgpackDecoder;
  /** WebSocket implementation (default: `globalThis.WebSocket`). Pass `ws` in Node. */
  WebSocket?: WebSocketConstructor;
  /** Default: `header` when `WebSocket` is given (Node), else `browser`. */
  authTransport?: AuthTransport;
  /** Reconnect delays. */
  backoff?: BackoffOptions;
  /** An attempt without a session (upgrade and welcome) after this long is abandoned (default 15 000 ms). */
  connectTimeoutMs?: number;
  /** A connection silent this long is considered dead and replaced (default 75 000 ms). */
  livenessTimeoutMs?: number;
  /** How often the client sends its own keepalive on `/ws`, `/jmap/ws` and rooms (default 30 000 ms). */
  keepaliveMs?: number;
  /** Resume position to start from (`/v1/ws` `since`, `/ws` `Subscribe.since`). */
  since?: number;
  /** `/jmap/ws`: the pushState to start from. */
  pushState?: string;
  /** `/jmap/ws`: data types to push (default `null`: all). */
  dataTypes?: string[] | null;
  /** `/ws`: topics to subscribe on every connect. */
  topics?: string[];
  /** rooms: rooms to join on every connect. */
  rooms?: string[];
  /** Remembered delivery ids for de-duplication (default 10 000). */
  dedupeSize?: number;
  /** How long `/ws` helpers wait for their Ack (default 10 000 ms). */
  requestTimeoutMs?: number;
}

/** What `notification` carries, per dialect. */
export type Notification = ForwardEmailNotification | RealtimeFrame | JmapStateChange | RoomEvent;

/** Events of {@link HeraldClient} and their payloads. */
export interface HeraldClientEvents {
  /** A session is established (welcome frame received). */
  connected: { url: string; attempt: number; welcome: unknown; reconnects: number };
  /** One new delivery (duplicates already removed). */
  notification: Notification;
  /** The session ended; the next attempt starts after `delayMs`. */
  reconnecting: { url: string; code: number; reason: string; attempt: number; delayMs: number };
  /** The server cannot replay what was missed: refetch your state. */
  resync: { reason: string };
  /** The client stopped for good (revoked, forbidden, bad credentials, or `close()`). */
  closed: { code: number; reason: string };
  /** Every decoded frame, before any handling (debugging, custom frames). */
  message: unknown;
  /** A problem the client handled itself (bad frame, failed token refresh). */
  error: Error;
}

/** A server `Error` frame or a lost request, as a rejected promise. */
export class HeraldError extends Error {
  /** `/ws` error code (400, 403, 404, 429, 503, ...) or the WebSocket close code. */
  readonly code: number;
  /** The error's details (`queued: true` for an offline direct message). */
  readonly details: Record<string, unknown> | undefined;

  /** Wraps a code, message and details. */
  constructor(code: number, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = "HeraldError";
    this.code = code;
    this.details = details;
  }
}

/** Close codes after which reconnecting cannot help: the client stops with `closed`. */
const FINAL_CLOSES: Record<number, string> = {
  4001: "credentials revoked",
  4403: "forbidden",
  4400: "bad auth frame",
};

/** HTTP refusals (Node only: browsers hide them) after which the client stops. */
const FINAL_STATUSES = new Set([400, 401, 403]);

type Handler<T> = (payload: T) => void;

/** The delay of reconnect attempt `attempt` (0-based): full jitter under an exponential ceiling. */
export function backoffDelay(attempt: number, opts: BackoffOptions = {}, random = Math.random): number {
  const initial = opts.initialMs ?? 500;
  const max = opts.maxMs ?? 30_000;
  const ceiling = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** Whether a `/ws` topic matches a subscription pattern (`*` one token, `>` the rest). */
export function topicMatches(pattern: string, topic: string): boolean {
  const p = pattern.split(".");
  const t = topic.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return t.length > i;
    if (i >= t.length) return false;
    if (p[i] !== "*" && p[i] !== t[i]) return false;
  }
  return p.length === t.length;
}

/** A bounded set of recently seen ids: insertion order, oldest evicted. */
class RecentIds {
  private readonly ids = new Set<string>();
  constructor(private readonly size: number) {}

  /** Adds `id`; false when it was already there. */
  add(id: string): boolean {
    if (this.ids.has(id)) return false;
    this.ids.add(id);
    if (this.ids.size > this.size) {
      const oldest = this.ids.values().next().value;
      if (oldest !== undefined) this.ids.delete(oldest);
    }
    return true;
  }
}

interface Pending {
  resolve: (v: never) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
  /** `Status` answers (Subscribe) resolve on this status instead of an Ack. */
  status?: string;
}

function base64(s: string): string {
  const bytes = new TextEncoder().encode(s);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

function dialectOf(url: string): Dialect {
  const path = new URL(url).pathname;
  if (path.endsWith("/jmap/ws")) return "jmap";
  if (path.endsWith("/api/v1/ws/connect")) return "rooms";
  if (path.endsWith("/v1/ws")) return "v1";
  if (path.endsWith("/ws")) return "ws";
  return "v1";
}

/**
 * A herald connection that survives node deaths, drains, NATS restarts and network
 * changes, and hands the application each event exactly once, in order.
 */
export class HeraldClient {
  /** The dialect in use. */
  readonly dialect: Dialect;
  /** Sessions established after the first one. */
  reconnects = 0;
  /** `/v1/ws`: the last `seq` delivered (the `since` of the next connect). */
  lastSeq: number | undefined;
  /** `/jmap/ws`: the last pushState delivered. */
  pushState: string | undefined;

  private readonly opts: HeraldClientOptions;
  private readonly urls: string[];
  private readonly WS: WebSocketConstructor;
  private readonly transport: AuthTransport;
  private readonly handlers = new Map<keyof HeraldClientEvents, Set<Handler<never>>>();
  private readonly seen: RecentIds;
  private readonly topics = new Set<string>();
  /** `/ws`: last seq delivered per subscription pattern (each one resumes on its own). */
  private readonly topicSeq = new Map<string, number>();
  private readonly rooms = new Set<string>();
  private readonly pending = new Map<string, Pending>();
  private ws: WebSocketLike | undefined;
  private urlIndex = 0;
  private attempt = 0;
  private requestCounter = 0;
  private stopped = false;
  private established = false;
  private jwt: string | undefined;
  private decoder: MsgpackDecoder | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private livenessTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  /** The URL of the current attempt or session. */
  private currentUrl = "";
  private keepaliveTimer: ReturnType<typeof setInterval> | undefined;
  /** Set by an HTTP refusal (Node's `ws`): status and Retry-After of the failed upgrade. */
  private refusal: { status: number; retryAfterMs?: number } | undefined;
  /** Set when the client itself closes a socket, so its close event is read correctly. */
  private replacing: string | undefined;
  private connectWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private closedWaiters: (() => void)[] = [];

  /** Checks the options; nothing connects until {@link connect}. */
  constructor(options: HeraldClientOptions) {
    this.opts = options;
    this.urls = Array.isArray(options.urls) ? [...options.urls] : [options.urls];
    if (this.urls.length === 0) throw new TypeError("herald-client: `urls` needs at least one URL");
    this.dialect = options.dialect ?? dialectOf(this.urls[0]);
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) {
      throw new TypeError("herald-client: no global WebSocket here: pass `WebSocket` (e.g. `import WebSocket from \"ws\"`)");
    }
    this.WS = WS;
    this.transport = options.authTransport ?? (options.WebSocket ? "header" : "browser");
    if (options.format === "msgpackr" && this.dialect !== "v1") {
      throw new TypeError("herald-client: `format: \"msgpackr\"` exists only on /v1/ws");
    }
    if (this.dialect === "jmap" && this.transport === "browser" && options.auth) {
      throw new TypeError(
        "herald-client: /jmap/ws authenticates with an Authorization header, which browsers cannot set: " +
          "pass a WebSocket implementation that can (Node's `ws`)",
      );
    }
    this.seen = new RecentIds(options.dedupeSize ?? 10_000);
    this.lastSeq = options.since;
    this.pushState = options.pushState;
    for (const t of options.topics ?? []) {
      this.topics.add(t);
      if (options.since !== undefined) this.topicSeq.set(t, options.since);
    }
    for (const r of options.rooms ?? []) this.rooms.add(r);
    const auth = options.auth;
    if (auth && "jwt" in auth && typeof auth.jwt === "string") this.jwt = auth.jwt;
  }

  /** Subscribes to a client event; returns the function that unsubscribes. */
  on<K extends keyof HeraldClientEvents>(event: K, handler: Handler<HeraldClientEvents[K]>): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(handler as Handler<never>);
    return () => set.delete(handler as Handler<never>);
  }

  /** Removes a handler added with {@link on}. */
  off<K extends keyof HeraldClientEvents>(event: K, handler: Handler<HeraldClientEvents[K]>): void {
    this.handlers.get(event)?.delete(handler as Handler<never>);
  }

  /** Whether a session is established right now. */
  get connected(): boolean {
    return this.established && this.ws?.readyState === 1;
  }

  /**
   * Connects (retrying with backoff across the URLs) and resolves at the first
   * established session; rejects when the client stops first (bad credentials, revoked).
   */
  connect(): Promise<void> {
    if (this.stopped) return Promise.reject(new HeraldError(0, "herald-client: closed; create a new client"));
    const p = new Promise<void>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (this.connected) {
      this.connectWaiters.pop()?.resolve();
    } else if (!this.ws && !this.reconnectTimer) {
      void this.open();
    }
    return p;
  }

  /** Stops for good: closes the socket with 1000 and emits `closed`. */
  async close(): Promise<void> {
    if (this.stopped) return;
    const done = new Promise<void>((r) => this.closedWaiters.push(r));
    this.stop(1000, "closed by the client");
    await done;
  }

  // -------------------------------------------------------------------------
  // /ws helpers

  /** `/ws`: subscribes (and re-subscribes on every reconnect, resuming with `since`). */
  async subscribe(topics: string[]): Promise<Record<string, unknown>> {
    this.requireDialect("ws", "subscribe");
    for (const t of topics) this.topics.add(t);
    if (!this.connected) return { topics, queued: true };
    return this.request("Subscribe", { topics }, "subscribed");
  }

  /** `/ws`: unsubscribes; the topics are not re-subscribed on reconnect. */
  async unsubscribe(topics: string[]): Promise<Record<string, unknown>> {
    this.requireDialect("ws", "unsubscribe");
    for (const t of topics) {
      this.topics.delete(t);
      this.topicSeq.delete(t);
    }
    if (!this.connected) return { topics };
    return this.request("Unsubscribe", { topics }, "unsubscribed");
  }

  /** `/ws`: publishes to a topic; resolves with the Ack (`recipients`), rejects with the Error. */
  broadcast(topic: string, payload: unknown): Promise<Ack> {
    this.requireDialect("ws", "broadcast");
    return this.request("Broadcast", { topic, payload });
  }

  /** `/ws`: sends to a user; resolves with the Ack (`delivered_to`), rejects with the Error (404 `queued`). */
  directMessage(targetUser: string, payload: unknown): Promise<Ack> {
    this.requireDialect("ws", "directMessage");
    return this.request("DirectMessage", { target_user: targetUser, payload });
  }

  /** rooms: joins (and re-joins on every reconnect). */
  joinRoom(room: string): void {
    this.requireDialect("rooms", "joinRoom");
    this.rooms.add(room);
    if (this.connected) this.sendJson({ type: "join_room", room });
  }

  /** rooms: leaves. */
  leaveRoom(room: string): void {
    this.requireDialect("rooms", "leaveRoom");
    this.rooms.delete(room);
    if (this.connected) this.sendJson({ type: "leave_room", room });
  }

  /** rooms: sends a message to a room the client is in. */
  sendMessage(room: string, data: unknown): void {
    this.requireDialect("rooms", "sendMessage");
    if (!this.connected) throw new HeraldError(0, "herald-client: not connected");
    this.sendJson({ type: "send_message", room, data });
  }

  /** Sends any frame as JSON (custom `/ws` types, JMAP requests). */
  send(frame: unknown): void {
    if (!this.connected) throw new HeraldError(0, "herald-client: not connected");
    this.sendJson(frame);
  }

  // -------------------------------------------------------------------------
  // connection lifecycle

  private emit<K extends keyof HeraldClientEvents>(event: K, payload: HeraldClientEvents[K]): void {
    for (const h of [...(this.handlers.get(event) ?? [])]) {
      try {
        (h as Handler<HeraldClientEvents[K]>)(payload);
      } catch (err) {
        // An application handler's bug must not kill the connection loop.
        if (event !== "error") this.emit("error", err instanceof Error ? err : new Error(String(err)));
      }
    }
  }

  private requireDialect(d: Dialect, what: string): void {
    if (this.dialect !== d) throw new TypeError(`herald-client: ${what}() exists only on the ${d} dialect`);
  }

  private async token(): Promise<string | undefined> {
    const auth = this.opts.auth;
    if (!auth || !("jwt" in auth)) return undefined;
    if (this.jwt === undefined) await this.refreshToken();
    return this.jwt;
  }

  private async refreshToken(): Promise<boolean> {
    const auth = this.opts.auth;
    if (!auth || !("jwt" in auth) || typeof auth.jwt !== "function") return false;
    try {
      this.jwt = await auth.jwt();
      return true;
    } catch (err) {
      this.emit("error", new Error(`herald-client: the jwt callback failed: ${String(err)}`));
      return false;
    }
  }

  private async buildUrl(base: string): Promise<{ url: string; protocols?: string[]; headers?: Record<string, string>; authFrame?: unknown }> {
    const u = new URL(base);
    const auth = this.opts.auth;
    const browser = this.transport === "browser";
    let protocols: string[] | undefined;
    let headers: Record<string, string> | undefined;
    let authFrame: unknown;
    const jwt = await this.token();
    switch (this.dialect) {
      case "v1": {
        u.searchParams.delete("since");
        if (this.lastSeq !== undefined) u.searchParams.set("since", String(this.lastSeq));
        if (this.opts.format === "msgpackr") u.searchParams.set("msgpackr", "true");
        if (!auth) break;
        if (browser) {
          u.searchParams.set("auth", "message");
          if ("user" in auth) authFrame = { event: "auth", username: auth.user, password: auth.password };
          else if ("token" in auth) authFrame = { event: "auth", username: auth.token, password: "", alias_id: auth.aliasId };
          else authFrame = { event: "auth", token: jwt, ...(auth.aliasId ? { alias_id: auth.aliasId } : {}) };
        } else {
          headers = this.authHeaders(u, jwt);
        }
        break;
      }
      case "jmap":
        protocols = ["jmap"];
        if (auth) headers = this.authHeaders(u, jwt);
        break;
      case "ws":
        if (jwt === undefined) break;
        if (browser) protocols = [`access_token.${jwt}`];
        else headers = { Authorization: `Bearer ${jwt}` };
        break;
      case "rooms":
        if (jwt !== undefined) u.searchParams.set("token", jwt);
        break;
    }
    return { url: u.toString(), protocols, headers, authFrame };
  }

  private authHeaders(u: URL, jwt: string | undefined): Record<string, string> {
    const auth = this.opts.auth!;
    if ("user" in auth) return { Authorization: `Basic ${base64(`${auth.user}:${auth.password}`)}` };
    if ("token" in auth) {
      u.searchParams.set("alias_id", auth.aliasId);
      return { Authorization: `Basic ${base64(`${auth.token}:`)}` };
    }
    if (auth.aliasId) u.searchParams.set("alias_id", auth.aliasId);
    return { Authorization: `Bearer ${jwt}` };
  }

  private async open(): Promise<void> {
    this.reconnectTimer = undefined;
    if (this.stopped) return;
    const base = this.urls[this.urlIndex % this.urls.length];
    this.urlIndex++;
    let target: Awaited<ReturnType<HeraldClient["buildUrl"]>>;
    try {
      if (this.opts.format === "msgpackr" && !this.decoder) {
        this.decoder = this.opts.msgpackr ?? (await loadMsgpackr());
      }
      target = await this.buildUrl(base);
    } catch (err) {
      return this.stop(1002, err instanceof Error ? err.message : String(err));
    }
    const { url, protocols, headers, authFrame } = target;
    if (this.stopped) return;
    this.established = false;
    this.refusal = undefined;
    this.replacing = undefined;
    let ws: WebSocketLike;
    try {
      ws = headers ? new this.WS(url, protocols, { headers }) : protocols ? new this.WS(url, protocols) : new this.WS(url);
    } catch (err) {
      // A malformed URL or protocol: retrying the same input cannot succeed.
      this.stop(1002, `herald-client: cannot open ${base}: ${String(err)}`);
      return;
    }
    this.ws = ws;
    this.currentUrl = base;
    ws.binaryType = "arraybuffer";
    // A handshake or welcome that never comes (a host that accepts TCP and then says
    // nothing) must not hold the client: count it as a failed attempt and move on.
    const connectMs = this.opts.connectTimeoutMs ?? 15_000;
    clearTimeout(this.connectTimer);
    this.connectTimer = setTimeout(() => {
      if (this.ws !== ws || this.established) return;
      try {
        ws.close();
      } catch {
        /* not open yet */
      }
      this.onSocketClosed(1006, `no session within ${connectMs} ms`, base);
    }, connectMs);
    this.watchRefusal(ws);
    ws.onopen = () => {
      if (authFrame) ws.send(JSON.stringify(authFrame));
      if (this.dialect === "jmap") {
        this.sendJson({ "@type": "WebSocketPushEnable", dataTypes: this.opts.dataTypes ?? null, pushState: this.pushState ?? null });
        this.established = true;
        this.onEstablished(base, null);
      }
      this.armLiveness();
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.armLiveness();
      let frame: unknown;
      try {
        frame = this.decode(ev.data);
      } catch (err) {
        this.emit("error", new Error(`herald-client: undecodable frame: ${String(err)}`));
        return;
      }
      this.emit("message", frame);
      this.handleFrame(frame, base);
    };
    ws.onerror = () => {
      // The close event follows with the code; nothing to do here.
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this.onSocketClosed(ev.code, ev.reason, base);
    };
  }

  /** Node's `ws` reports a refused upgrade's status and Retry-After; browsers only give 1006. */
  private watchRefusal(ws: WebSocketLike): void {
    const emitter = ws as unknown as {
      on?: (ev: string, cb: (req: unknown, res: { statusCode?: number; headers: Record<string, string | undefined>; resume(): void }) => void) => void;
      terminate?: () => void;
    };
    if (typeof emitter.on !== "function") return;
    emitter.on("unexpected-response", (_req, res) => {
      const status = res.statusCode ?? 0;
      const ra = Number(res.headers["retry-after"]);
      this.refusal = { status, retryAfterMs: Number.isFinite(ra) && ra >= 0 ? ra * 1000 : undefined };
      res.resume();
      emitter.terminate?.();
    });
  }

  private decode(data: unknown): unknown {
    if (typeof data === "string") return JSON.parse(data);
    const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : (data as Uint8Array);
    if (this.decoder) return plain(this.decoder.unpack(bytes));
    return JSON.parse(new TextDecoder().decode(bytes));
  }

  private sendJson(frame: unknown): void {
    if (this.ws?.readyState === 1) this.ws.send(JSON.stringify(frame));
  }

  private onEstablished(url: string, welcome: unknown): void {
    const first = this.reconnects === 0 && !this.everConnected;
    if (!first) this.reconnects++;
    this.everConnected = true;
    clearTimeout(this.connectTimer);
    const attempt = this.attempt;
    this.attempt = 0;
    this.startKeepalive();
    const announce = () => {
      this.emit("connected", { url, attempt, welcome, reconnects: this.reconnects });
      for (const w of this.connectWaiters.splice(0)) w.resolve();
    };
    if (this.dialect === "ws" && this.topics.size > 0) {
      // Each pattern resumes from its own last seq: one global maximum could skip an
      // older event of another pattern still in flight at the disconnect.
      const fresh: string[] = [];
      const subscribed: Promise<unknown>[] = [];
      for (const t of this.topics) {
        const since = this.topicSeq.get(t);
        if (since === undefined) fresh.push(t);
        else subscribed.push(this.request("Subscribe", { topics: [t], since }, "subscribed"));
      }
      if (fresh.length) subscribed.push(this.request("Subscribe", { topics: fresh }, "subscribed"));
      // `connected` means subscribed: an event published after it is not missed.
      const ws = this.ws;
      void Promise.allSettled(subscribed).then((results) => {
        for (const r of results) {
          if (r.status === "rejected") this.emit("error", r.reason instanceof Error ? r.reason : new Error(String(r.reason)));
        }
        if (this.ws === ws && this.established) announce();
      });
      return;
    }
    if (this.dialect === "rooms") for (const room of this.rooms) this.sendJson({ type: "join_room", room });
    announce();
  }

  private everConnected = false;

  private handleFrame(frame: unknown, url: string): void {
    if (!frame || typeof frame !== "object") return;
    const f = frame as Record<string, unknown>;
    switch (this.dialect) {
      case "v1":
        return this.handleV1(f, url);
      case "ws":
        return this.handleRealtime(f as unknown as RealtimeFrame, url);
      case "jmap":
        if (f["@type"] === "StateChange") {
          const sc = f as unknown as JmapStateChange;
          if (sc.pushState !== undefined) {
            if (sc.pushState === this.pushState) return;
            this.pushState = sc.pushState;
          }
          this.emit("notification", sc);
        }
        return;
      case "rooms":
        return this.handleRooms(f, url);
    }
  }

  private handleV1(f: Record<string, unknown>, url: string): void {
    switch (f.event) {
      case "connected":
        this.established = true;
        return this.onEstablished(url, f);
      case "ping":
        // Any client frame counts as the answer; the server ignores its content.
        return this.sendJson({ event: "pong" });
      case "resyncRequired":
        return this.emit("resync", { reason: "resyncRequired: the missed events are no longer retained" });
    }
    if (typeof f.event !== "string") return;
    const seq = typeof f.seq === "number" ? f.seq : undefined;
    const id = typeof f.notificationId === "string" ? f.notificationId : seq !== undefined ? `seq:${seq}` : undefined;
    if (id !== undefined && !this.seen.add(id)) return;
    if (seq !== undefined && (this.lastSeq === undefined || seq > this.lastSeq)) this.lastSeq = seq;
    this.emit("notification", f as unknown as ForwardEmailNotification);
  }

  private handleRealtime(f: RealtimeFrame, url: string): void {
    const data = (f.data ?? {}) as Record<string, unknown>;
    switch (f.type) {
      case "Status": {
        const status = data.status;
        if (status === "connected") {
          this.established = true;
          return this.onEstablished(url, f);
        }
        if (status === "resync_required") this.emit("resync", { reason: "resync_required: refetch, then subscribe without since" });
        this.settle(f, data, status as string);
        return;
      }
      case "Ack":
        return this.settle(f, data, undefined);
      case "Error": {
        const details = data.details as Record<string, unknown> | undefined;
        const id = f.id ?? (details?.message_id as string | undefined);
        const p = id !== undefined ? this.pending.get(id) : undefined;
        if (p) {
          this.pending.delete(id!);
          clearTimeout(p.timer);
          p.reject(new HeraldError(Number(data.code), String(data.message), details));
        } else {
          this.emit("error", new HeraldError(Number(data.code), String(data.message), details));
        }
        return;
      }
      case "Pong":
        return;
      case "AuthStatus":
        if (data.status === "token_expiring") void this.renewToken();
        return;
      case "Ping":
        return this.sendJson({ type: "Pong", data: { timestamp: data.timestamp } });
    }
    const meta = (data.metadata ?? {}) as Record<string, unknown>;
    const seq = typeof f.seq === "number" ? f.seq : typeof meta.seq === "number" ? meta.seq : undefined;
    const mid = typeof meta.message_id === "string" ? meta.message_id : undefined;
    const key = mid ?? (seq !== undefined ? `seq:${seq}` : undefined);
    if (key !== undefined && !this.seen.add(key)) return;
    if (seq !== undefined && typeof data.topic === "string") {
      for (const t of this.topics) {
        if (topicMatches(t, data.topic) && (this.topicSeq.get(t) ?? -1) < seq) this.topicSeq.set(t, seq);
      }
    }
    if (seq !== undefined && (this.lastSeq === undefined || seq > this.lastSeq)) this.lastSeq = seq;
    this.emit("notification", f);
  }

  private handleRooms(f: Record<string, unknown>, url: string): void {
    if (f.type === "connected") {
      this.established = true;
      return this.onEstablished(url, f);
    }
    if (f.type === "pong") return;
    const seq = typeof f.seq === "number" ? f.seq : undefined;
    if (seq !== undefined && !this.seen.add(`${String(f.room)}:${seq}`)) return;
    this.emit("notification", f as unknown as RoomEvent);
  }

  /** Resolves or rejects the `/ws` request an answer belongs to (by the echoed request id). */
  private settle(f: RealtimeFrame, data: Record<string, unknown>, status: string | undefined): void {
    const details = data.details as Record<string, unknown> | undefined;
    const id = f.id ?? (data.message_id as string | undefined) ?? (details?.message_id as string | undefined);
    if (id === undefined) return;
    const p = this.pending.get(id);
    if (!p) return;
    if (p.status !== undefined && p.status !== status) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    p.resolve(data as never);
  }

  private nextId(): string {
    return `hc-${++this.requestCounter}`;
  }

  private request<T>(type: string, data: Record<string, unknown>, status?: string): Promise<T> {
    if (!this.connected) return Promise.reject(new HeraldError(0, `herald-client: not connected; ${type} not sent`));
    const id = this.nextId();
    const timeout = this.opts.requestTimeoutMs ?? 10_000;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new HeraldError(408, `herald-client: no answer to ${type} ${id} within ${timeout} ms`));
      }, timeout);
      this.pending.set(id, { resolve: resolve as (v: never) => void, reject, timer, status });
      this.sendJson({ type, data, id, timestamp: Date.now() });
    });
  }

  /** `token_expiring`: fetch a fresh token, then reconnect at once; the resume position makes it lossless. */
  private async renewToken(): Promise<void> {
    if (!(await this.refreshToken())) return;
    this.replaceSocket("token refreshed");
  }

  /** Closes the current socket on purpose and reconnects without delay. */
  private replaceSocket(reason: string): void {
    const ws = this.ws;
    if (!ws) return;
    this.replacing = reason;
    try {
      ws.close(1000, reason);
    } catch {
      /* already closing */
    }
    // Do not wait for the closing handshake of a socket that may be dead.
    this.onSocketClosed(1000, reason, this.currentUrl);
  }

  private armLiveness(): void {
    clearTimeout(this.livenessTimer);
    const ms = this.opts.livenessTimeoutMs ?? 75_000;
    this.livenessTimer = setTimeout(() => {
      // Nothing, not even the server's ping, within the window: a half-open connection.
      this.replaceSocket(`no frame for ${ms} ms: connection presumed dead`);
    }, ms);
  }

  private startKeepalive(): void {
    clearInterval(this.keepaliveTimer);
    if (this.dialect === "v1") return; // the server pings; the client answers.
    const ms = this.opts.keepaliveMs ?? 30_000;
    this.keepaliveTimer = setInterval(() => {
      if (this.dialect === "ws") this.sendJson({ type: "Ping", data: { timestamp: Date.now() } });
      else if (this.dialect === "rooms") this.sendJson({ type: "ping" });
      else this.sendJson({ "@type": "Request", id: this.nextId(), using: ["urn:ietf:params:jmap:core"], methodCalls: [["Core/echo", {}, "k"]] });
    }, ms);
  }

  private detach(): void {
    clearTimeout(this.livenessTimer);
    clearTimeout(this.connectTimer);
    clearInterval(this.keepaliveTimer);
    const ws = this.ws;
    this.ws = undefined;
    if (ws) {
      ws.onopen = ws.onmessage = null;
      ws.onclose = null;
      // Node's `ws` throws an error event nobody listens to (closing while connecting).
      ws.onerror = () => {};
    }
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new HeraldError(0, `herald-client: connection lost before the answer to ${id}; it may or may not have been applied`));
    }
    this.pending.clear();
  }

  private onSocketClosed(code: number, reason: string, url: string): void {
    const wasEstablished = this.established;
    const replacing = this.replacing;
    const refusal = this.refusal;
    const ws = this.ws;
    this.detach();
    this.established = false;
    if (this.stopped) return;
    if (ws && ws.readyState < 2) {
      try {
        ws.close();
      } catch {
        /* ignore */
      }
    }
    if (replacing !== undefined) {
      this.emit("reconnecting", { url, code, reason: replacing, attempt: 0, delayMs: 0 });
      void this.open();
      return;
    }
    const final = FINAL_CLOSES[code];
    if (final) return this.stop(code, reason || final);
    if (refusal && FINAL_STATUSES.has(refusal.status) && !(refusal.status === 401 && this.canRefresh())) {
      return this.stop(4000 + refusal.status, `upgrade refused with HTTP ${refusal.status}`);
    }
    if (code === 4401 || refusal?.status === 401) {
      // Expired or rejected credentials: only a fresh JWT can help, and only once in a row.
      if (!this.canRefresh() || this.refreshedWithoutSession) {
        return this.stop(4401, reason || "authentication failed");
      }
      this.refreshedWithoutSession = true;
      void this.refreshToken().then((ok) => (ok ? this.schedule(url, code, reason, 0) : this.stop(4401, "token refresh failed")));
      return;
    }
    if (wasEstablished) this.refreshedWithoutSession = false;
    const max = this.opts.backoff?.maxAttempts;
    if (max !== undefined && this.attempt >= max) {
      return this.stop(code, `gave up after ${max} attempts: ${reason || `close ${code}`}`);
    }
    let delay = backoffDelay(this.attempt, this.opts.backoff);
    if (refusal?.retryAfterMs !== undefined) delay = Math.max(delay, refusal.retryAfterMs);
    this.attempt++;
    this.schedule(url, code, reason || (refusal ? `HTTP ${refusal.status}` : ""), delay);
  }

  private refreshedWithoutSession = false;

  private canRefresh(): boolean {
    const auth = this.opts.auth;
    return !!auth && "jwt" in auth && typeof auth.jwt === "function";
  }

  private schedule(url: string, code: number, reason: string, delayMs: number): void {
    if (this.stopped) return;
    this.emit("reconnecting", { url, code, reason, attempt: this.attempt, delayMs });
    this.reconnectTimer = setTimeout(() => void this.open(), delayMs);
  }

  private stop(code: number, reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    const ws = this.ws;
    this.detach();
    if (ws && ws.readyState < 2) {
      try {
        ws.close(1000, "client closing");
      } catch {
        /* ignore */
      }
    }
    this.emit("closed", { code, reason });
    const err = new HeraldError(code, `herald-client stopped: ${reason}`);
    for (const w of this.connectWaiters.splice(0)) w.reject(err);
    for (const w of this.closedWaiters.splice(0)) w();
  }
}

/** A decoder given `mapsAsObjects: false` yields `Map`s: hand the application plain objects. */
function plain(v: unknown): unknown {
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [String(k), plain(x)]));
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
    for (const k of Object.keys(v)) (v as Record<string, unknown>)[k] = plain((v as Record<string, unknown>)[k]);
  }
  return v;
}

async function loadMsgpackr(): Promise<MsgpackDecoder> {
  // A variable specifier keeps bundlers and tsc from requiring msgpackr for JSON users.
  const name = "msgpackr";
  try {
    const mod = (await import(name)) as { Decoder: new (o: object) => MsgpackDecoder };
    // Records (herald's default, as Forward Email's) decode to objects either way;
    // this makes plain MessagePack maps objects too instead of `Map`s.
    return new mod.Decoder({ mapsAsObjects: true });
  } catch (err) {
    throw new HeraldError(0, `herald-client: format "msgpackr" needs the msgpackr package (npm i msgpackr) or the \`msgpackr\` option: ${String(err)}`);
  }
}
