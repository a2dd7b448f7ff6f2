#!/usr/bin/env node
/**
 * Publish a herald event from a Node.js backend.
 *
 * This is the producer side of herald: a mail, calendar or contact backend calls
 * `publishEvent` (or runs this file) whenever something changes for an alias, and
 * every WebSocket session of that alias, on every herald node, receives it.
 *
 * What goes on the wire (herald SPEC section 3):
 *
 * - subject  `herald.v1.alias.<aliasId>.<event>`, e.g.
 *            `herald.v1.alias.64b7f0c2a1b2c3d4e5f60718.newMessage`
 * - body     a MessagePack map with string keys (msgpackr, `useRecords: false`):
 *            {aliasId: "64b7f0c2a1b2c3d4e5f60718",
 *             payload: {event: "newMessage", mailbox: "...",
 *                       message: {id: "...", uid: 42, eml: "<raw RFC 5322>"}}}
 *            herald passes the payload through and adds `timestamp` (unless you set
 *            one), `notificationId` (unless you set one) and `seq`.
 * - headers  `Nats-Msg-Id`: a UUID. JetStream drops a second message with the same
 *            id inside the dedup window (2 min by default), so a retry after a
 *            timeout is delivered once: reuse the id when you retry.
 *            `traceparent` (and `tracestate` when there is one): the W3C trace
 *            context of this producer's `publish <event>` span, so the trace goes
 *            from this process through the herald node to each WebSocket.
 *
 * The message is published with JetStream (the herald nodes create the stream over
 * the event subjects at start) and the PubAck (stream, seq, duplicate) is returned.
 * If no stream captures the subject, it falls back to a core NATS publish (live
 * subscribers only) and says so on stderr.
 *
 * Usage:
 *   npm ci
 *   node producer.mjs --nats nats://127.0.0.1:4222 \
 *       --alias 64b7f0c2a1b2c3d4e5f60718 --eml message.eml
 *   # no --eml: a built-in sample message (CRLF line endings, non-ASCII UTF-8)
 *
 * It prints one JSON line: subject, msgId, traceparent, stream, seq, duplicate.
 *
 * Tracing: the SDK here has no exporter unless `--print-span` is given (spans to
 * stderr). In a real service keep your own TracerProvider and exporter (e.g.
 * @opentelemetry/exporter-trace-otlp-http behind a BatchSpanProcessor); the
 * injection code below stays the same.
 */

import { randomUUID } from "node:crypto";
import { readFileSync, realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { inspect, parseArgs } from "node:util";

import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, headers as natsHeaders } from "@nats-io/transport-node";
import { context, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  BasicTracerProvider,
  ConsoleSpanExporter,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { Packr } from "msgpackr";

/** Identifiers used as NATS subject tokens (alias ids, event names). */
export const TOKEN_RE = /^[A-Za-z0-9_-]{1,128}$/;

/** Per-alias events of herald's catalog (SPEC section 3); `newRelease` is a broadcast. */
export const ALIAS_EVENTS = Object.freeze([
  // mail
  "newMessage", "messagesMoved", "messagesCopied", "flagsUpdated",
  "messagesExpunged", "mailboxCreated", "mailboxDeleted", "mailboxRenamed",
  "labelsUpdated",
  // calendar
  "calendarCreated", "calendarUpdated", "calendarDeleted",
  "calendarEventCreated", "calendarEventUpdated", "calendarEventDeleted",
  // contacts
  "contactCreated", "contactUpdated", "contactDeleted",
  "addressBookCreated", "addressBookUpdated", "addressBookDeleted",
]);

/**
 * A sample message: CRLF line endings as on the wire (RFC 5322) and raw UTF-8 in
 * headers and body (RFC 6532). herald delivers it byte for byte.
 */
export const SAMPLE_EML = [
  "Return-Path: <ana@example.org>",
  "From: =?UTF-8?Q?Ana_Mu=C3=B1oz?= <ana@example.org>",
  "To: Demo <demo@herald.local>",
  "Subject: Grüße aus Zürich — 会議の議事録 📬",
  "Date: Mon, 23 Nov 2026 12:00:00 +0100",
  "Message-ID: <sample-1@example.org>",
  "MIME-Version: 1.0",
  "Content-Type: text/plain; charset=utf-8",
  "Content-Transfer-Encoding: 8bit",
  "",
  "Hallo Demo,",
  "",
  "anbei die Notizen: Ärger, Öl, Übermaß; café, naïve, señor.",
  "日本語のテキストと絵文字 🎉👍.",
  "",
  "-- ",
  "Ana",
  "",
].join("\r\n");

/** A bad argument (alias id, event name, payload) caught before publishing. */
export class ProducerError extends Error {
  constructor(message) {
    super(message);
    this.name = "ProducerError";
  }
}

export function validateToken(kind, value) {
  if (typeof value !== "string" || !TOKEN_RE.test(value)) {
    throw new ProducerError(
      `invalid ${kind} ${JSON.stringify(value)}: must match [A-Za-z0-9_-]{1,128} ` +
        "(it becomes a NATS subject token)",
    );
  }
  return value;
}

/** `herald.v1.alias.<aliasId>.<event>`, after validating both tokens. */
export function subjectFor(aliasId, event) {
  validateToken("alias id", aliasId);
  if (!ALIAS_EVENTS.includes(event)) {
    throw new ProducerError(
      `unknown event ${JSON.stringify(event)}: expected one of ${ALIAS_EVENTS.join(", ")}`,
    );
  }
  return `herald.v1.alias.${aliasId}.${event}`;
}

/** Payload of a `newMessage` event carrying the raw message (`message.eml`). */
export function newMessagePayload(eml, { mailbox = "INBOX", uid = 1, messageId } = {}) {
  return {
    event: "newMessage",
    mailbox,
    message: { id: messageId ?? randomUUID().replaceAll("-", ""), uid, eml },
  };
}

/** Payload for `event`; `data` (a JSON string) adds fields, a `message` object is merged. */
export function buildPayload(event, eml, data) {
  let extra = {};
  if (data !== undefined) {
    try {
      extra = JSON.parse(data);
    } catch (err) {
      throw new ProducerError(`--data is not JSON: ${err.message}`);
    }
    if (extra === null || typeof extra !== "object" || Array.isArray(extra)) {
      throw new ProducerError("--data must be a JSON object");
    }
  }
  let payload;
  if (event === "newMessage") {
    payload = newMessagePayload(eml);
    const { message, ...rest } = extra;
    if (message && typeof message === "object" && !Array.isArray(message)) {
      Object.assign(payload.message, message);
    } else if (message !== undefined) {
      rest.message = message;
    }
    Object.assign(payload, rest);
  } else {
    payload = { ...extra };
  }
  payload.event = event;
  return payload;
}

// Standard MessagePack maps with string keys (no msgpackr records extension):
// what herald (rmp_serde) and Python's msgpack read and write.
const packr = new Packr({ useRecords: false });

/** The bus envelope `{aliasId, payload}` as a MessagePack map. */
export function packEnvelope(aliasId, payload) {
  return packr.pack({ aliasId, payload });
}

let provider;

/** This process's OpenTelemetry TracerProvider (created once). */
export function tracerProvider({ printSpans = false } = {}) {
  if (!provider) {
    provider = new BasicTracerProvider({
      resource: resourceFromAttributes({
        "service.name": process.env.OTEL_SERVICE_NAME || "mail-backend-producer",
      }),
      spanProcessors: printSpans ? [new SimpleSpanProcessor(new ConsoleSpanExporter())] : [],
    });
    trace.setGlobalTracerProvider(provider);
  }
  return provider;
}

const propagator = new W3CTraceContextPropagator();
// Writes propagation fields straight into a NATS MsgHdrs object.
const natsHeaderSetter = {
  set(carrier, key, value) {
    carrier.set(key, value);
  },
};

// Stream found per event, so a long-running producer asks JetStream once.
const streams = new Map();

/**
 * Name of the JetStream stream that stores `herald.v1.alias.*.<event>`, or null.
 * Asked first because a JetStream publish to a subject that no stream captures
 * would be a request to the herald nodes' plain subscriptions, which never
 * answer: it would time out instead of failing fast.
 */
export async function heraldStream(nc, event) {
  if (!streams.has(event)) {
    try {
      const jsm = await jetstreamManager(nc, { checkAPI: false });
      streams.set(event, await jsm.streams.find(`herald.v1.alias.*.${event}`));
    } catch {
      return null; // not found, JetStream disabled, no permission
    }
  }
  return streams.get(event);
}

/**
 * Publish one event for `aliasId` on an open NATS connection.
 * `payload.event` names the event. Pass the same `msgId` when you retry a publish
 * that timed out: herald delivers it once.
 */
export async function publishEvent(nc, aliasId, payload, { msgId, timeout = 5000 } = {}) {
  const event = payload?.event;
  if (typeof event !== "string") {
    throw new ProducerError('payload must be an object with a string "event"');
  }
  const subject = subjectFor(aliasId, event);
  msgId = msgId || randomUUID();
  const body = packEnvelope(aliasId, payload);

  // The global tracer: your service's TracerProvider if it registered one (the CLI
  // below registers the SDK's); with none, the span is a no-op and no traceparent is sent.
  const tracer = trace.getTracer("herald.examples.producer");
  // A PRODUCER span per publish; its context travels in the NATS headers.
  const span = tracer.startSpan(`publish ${event}`, {
    kind: SpanKind.PRODUCER,
    attributes: {
      "messaging.system": "nats",
      "messaging.operation.type": "publish",
      "messaging.destination.name": subject,
      "messaging.message.id": msgId,
      "messaging.message.body.size": body.length,
      "herald.alias_id": aliasId,
      "herald.event": event,
    },
  });
  try {
    const h = natsHeaders();
    h.set("Nats-Msg-Id", msgId);
    // Writes `traceparent` (and `tracestate` if any) of the span.
    propagator.inject(trace.setSpan(context.active(), span), h, natsHeaderSetter);
    const result = { subject, msgId, traceparent: h.get("traceparent") || null, stream: null, seq: null, duplicate: null };
    const stream = await heraldStream(nc, event);
    if (stream !== null) {
      const ack = await jetstream(nc).publish(subject, body, { headers: h, timeout });
      Object.assign(result, { stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate });
      span.setAttribute("messaging.nats.stream", ack.stream);
      span.setAttribute("messaging.nats.stream_seq", ack.seq);
    } else {
      // No JetStream stream over this subject (no herald node has started against
      // this NATS yet?). Core NATS still reaches nodes subscribed right now, without
      // persistence or replay.
      console.error(
        `warning: no JetStream stream captures ${subject}; published with core NATS (no ack, no replay)`,
      );
      nc.publish(subject, body, { headers: h });
      await nc.flush();
    }
    return result;
  } catch (err) {
    span.recordException(err);
    span.setStatus({ code: SpanStatusCode.ERROR, message: String(err?.message ?? err) });
    throw err;
  } finally {
    span.end();
  }
}

/** Connect to NATS, failing fast (a CLI should not retry forever). */
export function connectNats(url) {
  return connect({
    servers: url.split(",").map((s) => s.trim()),
    name: "herald-example-producer-node",
    timeout: 3000,
    maxReconnectAttempts: 1,
  });
}

/** Read a message file as raw bytes, strictly UTF-8 (herald carries eml as a string). */
export function readEml(path) {
  if (path === undefined) return SAMPLE_EML;
  const raw = readFileSync(path);
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(raw);
  } catch {
    throw new ProducerError(`${path}: not UTF-8; herald carries eml as a string`);
  }
}

const USAGE = `usage: producer.mjs --alias ID [--nats URL] [--event NAME] [--eml FILE]
                    [--data JSON] [--msg-id ID] [--print-span]

Publish one herald event (default: newMessage with a raw RFC 5322 message) to NATS.

  --nats URL      NATS URL(s), comma-separated (default nats://127.0.0.1:4222)
  --alias ID      alias id, e.g. 64b7f0c2a1b2c3d4e5f60718
  --event NAME    event name (default newMessage)
  --eml FILE      raw RFC 5322 message for newMessage (default: a built-in sample)
  --data JSON     extra payload fields as a JSON object (the whole payload for other events)
  --msg-id ID     Nats-Msg-Id to use (default: a new UUID); reuse it on retry
  --print-span    print the producer span to stderr`;

export async function main(argv = process.argv.slice(2)) {
  let args;
  try {
    ({ values: args } = parseArgs({
      args: argv,
      options: {
        nats: { type: "string", default: "nats://127.0.0.1:4222" },
        alias: { type: "string" },
        event: { type: "string", default: "newMessage" },
        eml: { type: "string" },
        data: { type: "string" },
        "msg-id": { type: "string" },
        "print-span": { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (err) {
    console.error(`error: ${err.message}\n${USAGE}`);
    return 2;
  }
  if (args.help) {
    console.log(USAGE);
    return 0;
  }
  if (args.alias === undefined) {
    console.error(`error: --alias is required\n${USAGE}`);
    return 2;
  }
  const printSpans = args["print-span"];
  if (printSpans) {
    // ConsoleSpanExporter prints with console.dir (stdout); keep stdout for the result line.
    console.dir = (obj, opts) => process.stderr.write(inspect(obj, opts) + "\n");
  }
  tracerProvider({ printSpans });
  let result;
  try {
    subjectFor(args.alias, args.event); // validate before connecting
    const payload = buildPayload(args.event, readEml(args.eml), args.data);
    let nc;
    try {
      nc = await connectNats(args.nats);
    } catch (err) {
      console.error(`error: cannot connect to ${args.nats}: ${err.message}`);
      return 1;
    }
    try {
      result = await publishEvent(nc, args.alias, payload, { msgId: args["msg-id"] });
    } finally {
      await nc.drain();
    }
  } catch (err) {
    if (err instanceof ProducerError) {
      console.error(`error: ${err.message}`);
      return 2;
    }
    console.error(`error: cannot publish via ${args.nats}: ${err.message}`);
    return 1;
  } finally {
    await provider.shutdown(); // flushes exporters
  }
  process.stdout.write(JSON.stringify(result) + "\n");
  return 0;
}

// Run main() when executed directly (not when imported).
if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main();
}
