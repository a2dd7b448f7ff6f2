#!/usr/bin/env python3
"""Publish a herald event from a Python backend.

This is the producer side of herald: a mail, calendar or contact backend calls
``publish_event`` (or runs this file) whenever something changes for an alias,
and every WebSocket session of that alias, on every herald node, receives it.

What goes on the wire (herald SPEC section 3):

* subject   ``herald.v1.alias.<aliasId>.<event>``, e.g.
            ``herald.v1.alias.64b7f0c2a1b2c3d4e5f60718.newMessage``
* body      a MessagePack map with string keys (``msgpack.packb``)::

                {"aliasId": "64b7f0c2a1b2c3d4e5f60718",
                 "payload": {"event": "newMessage",
                             "mailbox": "...",
                             "message": {"id": "...", "uid": 42, "eml": "<raw RFC 5322>"}}}

            herald passes the payload through and adds ``timestamp`` (unless
            you set one), ``notificationId`` (unless you set one) and ``seq``.
* headers   ``Nats-Msg-Id``: a UUID. JetStream drops a second message with the
            same id inside the dedup window (2 min by default), so a retry
            after a timeout is delivered once: reuse the id when you retry.
            ``traceparent`` (and ``tracestate`` when there is one): the W3C
            trace context of this producer's ``publish <event>`` span, so the
            trace in your tracing backend goes from this process through the
            herald node to each WebSocket.

The message is published with JetStream (the herald nodes create the stream
over the event subjects at start) and the PubAck (stream, seq, duplicate) is
returned. If no stream captures the subject, it falls back to a core NATS
publish (live subscribers only) and says so on stderr.

Usage::

    pip install -r requirements.txt
    python producer.py --nats nats://127.0.0.1:4222 \\
        --alias 64b7f0c2a1b2c3d4e5f60718 --eml message.eml
    # no --eml: a built-in sample message (CRLF line endings, non-ASCII UTF-8)

It prints one JSON line: subject, msgId, traceparent, stream, seq, duplicate.

Tracing: the SDK here has no exporter unless ``--print-span`` is given (spans
to stderr). In a real service, keep your existing TracerProvider and add an
exporter to it, e.g. ``opentelemetry-exporter-otlp``'s ``OTLPSpanExporter``
behind a ``BatchSpanProcessor``; the injection code below stays the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Optional

import msgpack
import nats
import nats.errors
import nats.js.errors
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# Identifiers used as NATS subject tokens (alias ids, event names). herald
# rejects anything else; so do we, before publishing.
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")

# Per-alias events of herald's catalog (SPEC section 3). `newRelease` is a
# broadcast event (subject herald.v1.broadcast.newRelease), not per alias.
ALIAS_EVENTS = (
    # mail
    "newMessage", "messagesMoved", "messagesCopied", "flagsUpdated",
    "messagesExpunged", "mailboxCreated", "mailboxDeleted", "mailboxRenamed",
    "labelsUpdated",
    # calendar
    "calendarCreated", "calendarUpdated", "calendarDeleted",
    "calendarEventCreated", "calendarEventUpdated", "calendarEventDeleted",
    # contacts
    "contactCreated", "contactUpdated", "contactDeleted",
    "addressBookCreated", "addressBookUpdated", "addressBookDeleted",
)

# A sample message: CRLF line endings as on the wire (RFC 5322), and raw
# UTF-8 in headers and body (RFC 6532). herald delivers it byte for byte.
SAMPLE_EML = (
    "Return-Path: <ana@example.org>\r\n"
    "From: =?UTF-8?Q?Ana_Mu=C3=B1oz?= <ana@example.org>\r\n"
    "To: Demo <demo@herald.local>\r\n"
    "Subject: Grüße aus Zürich — 会議の議事録 📬\r\n"
    "Date: Mon, 23 Nov 2026 12:00:00 +0100\r\n"
    "Message-ID: <sample-1@example.org>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Hallo Demo,\r\n"
    "\r\n"
    "anbei die Notizen: Ärger, Öl, Übermaß; café, naïve, señor.\r\n"
    "日本語のテキストと絵文字 🎉👍.\r\n"
    "\r\n"
    "-- \r\n"
    "Ana\r\n"
)


class ProducerError(ValueError):
    """A bad argument (alias id, event name, payload) caught before publishing."""


def validate_token(kind: str, value: str) -> str:
    """Return ``value`` if it may be a subject token, else raise ProducerError."""
    if not isinstance(value, str) or not TOKEN_RE.fullmatch(value):
        raise ProducerError(
            f"invalid {kind} {value!r}: must match [A-Za-z0-9_-]{{1,128}} "
            f"(it becomes a NATS subject token)"
        )
    return value


def subject_for(alias_id: str, event: str) -> str:
    """``herald.v1.alias.<aliasId>.<event>``, after validating both tokens."""
    validate_token("alias id", alias_id)
    if event not in ALIAS_EVENTS:
        raise ProducerError(
            f"unknown event {event!r}: expected one of {', '.join(ALIAS_EVENTS)}"
        )
    return f"herald.v1.alias.{alias_id}.{event}"


def new_message_payload(eml: str, *, mailbox: str = "INBOX", uid: int = 1,
                        message_id: Optional[str] = None) -> dict[str, Any]:
    """Payload of a ``newMessage`` event carrying the raw message (``message.eml``)."""
    return {
        "event": "newMessage",
        "mailbox": mailbox,
        "message": {"id": message_id or uuid.uuid4().hex, "uid": uid, "eml": eml},
    }


def pack_envelope(alias_id: str, payload: dict[str, Any]) -> bytes:
    """The bus envelope ``{"aliasId", "payload"}`` as a MessagePack map."""
    # packb writes dicts as maps with string keys and str as MessagePack str
    # (UTF-8): exactly what herald (rmp_serde) and msgpackr expect.
    return msgpack.packb({"aliasId": alias_id, "payload": payload}, use_bin_type=True)


_tracer_provider: Optional[TracerProvider] = None


def tracer_provider(print_spans: bool = False) -> TracerProvider:
    """This process's OpenTelemetry SDK TracerProvider (created once).

    ``Resource.create`` honours ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``.
    """
    global _tracer_provider
    if _tracer_provider is None:
        _tracer_provider = TracerProvider(
            resource=Resource.create({"service.name": "mail-backend-producer"})
        )
        trace.set_tracer_provider(_tracer_provider)
    if print_spans:
        _tracer_provider.add_span_processor(
            SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr))
        )
    return _tracer_provider


# Stream found per event, so a long-running producer asks JetStream once.
_streams: dict[str, str] = {}


async def herald_stream(js: Any, event: str) -> Optional[str]:
    """Name of the JetStream stream that stores ``herald.v1.alias.*.<event>``, or None.

    Asked first because a JetStream publish to a subject that no stream
    captures would be a request to the herald nodes' plain subscriptions,
    which never answer: it would time out instead of failing fast.
    """
    if event not in _streams:
        try:
            _streams[event] = await js.find_stream_name_by_subject(f"herald.v1.alias.*.{event}")
        except nats.errors.Error:  # not found, JetStream disabled, no permission
            return None
    return _streams[event]


@dataclass
class PublishResult:
    subject: str
    msgId: str
    traceparent: Optional[str]
    stream: Optional[str]
    seq: Optional[int]
    duplicate: Optional[bool]


async def publish_event(nc: nats.aio.client.Client, alias_id: str, payload: dict[str, Any],
                        *, msg_id: Optional[str] = None, timeout: float = 5.0) -> PublishResult:
    """Publish one event for ``alias_id`` on an open NATS connection.

    ``payload["event"]`` names the event. Pass the same ``msg_id`` when you
    retry a publish that timed out: herald delivers it once.
    """
    event = payload.get("event") if isinstance(payload, dict) else None
    if not isinstance(event, str):
        raise ProducerError('payload must be a dict with a string "event"')
    subject = subject_for(alias_id, event)
    msg_id = msg_id or str(uuid.uuid4())
    body = pack_envelope(alias_id, payload)

    # The global tracer: your service's TracerProvider if it set one (the CLI
    # below installs the SDK's); with none, the span is a no-op and no
    # traceparent is sent.
    tracer = trace.get_tracer("herald.examples.producer")
    # A PRODUCER span per publish; its context travels in the NATS headers.
    with tracer.start_as_current_span(
        f"publish {event}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "publish",
            "messaging.destination.name": subject,
            "messaging.message.id": msg_id,
            "messaging.message.body.size": len(body),
            "herald.alias_id": alias_id,
            "herald.event": event,
        },
    ) as span:
        headers: dict[str, str] = {"Nats-Msg-Id": msg_id}
        # Writes `traceparent` (and `tracestate` if any) of the current span.
        TraceContextTextMapPropagator().inject(headers)
        try:
            js = nc.jetstream()
            stream = await herald_stream(js, event)
            if stream is not None:
                ack = await js.publish(subject, body, timeout=timeout, headers=headers)
                stream, seq, duplicate = ack.stream, ack.seq, bool(ack.duplicate)
                span.set_attribute("messaging.nats.stream", stream)
                span.set_attribute("messaging.nats.stream_seq", seq)
            else:
                # No JetStream stream over this subject (no herald node has
                # started against this NATS yet?). Core NATS still reaches nodes
                # that are subscribed right now, without persistence or replay.
                print(f"warning: no JetStream stream captures {subject}; "
                      f"published with core NATS (no ack, no replay)", file=sys.stderr)
                await nc.publish(subject, body, headers=headers)
                await nc.flush(timeout=timeout)
                seq, duplicate = None, None
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        return PublishResult(subject, msg_id, headers.get("traceparent"), stream, seq, duplicate)


async def connect(url: str) -> nats.aio.client.Client:
    """Connect to NATS, failing fast (a CLI should not retry forever)."""
    async def quiet(_exc: Exception) -> None:  # errors surface as exceptions
        pass

    return await nats.connect(
        servers=[u.strip() for u in url.split(",")],
        name="herald-example-producer-python",
        connect_timeout=3,
        max_reconnect_attempts=1,
        error_cb=quiet,
    )


def read_eml(path: Optional[str]) -> str:
    """Read a message file as raw bytes (text mode would turn CRLF into LF)."""
    if path is None:
        return SAMPLE_EML
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProducerError(f"{path}: not UTF-8 ({exc}); herald carries eml as a string") from exc


def build_payload(event: str, eml: str, data: Optional[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if data is not None:
        try:
            extra = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ProducerError(f"--data is not JSON: {exc}") from exc
        if not isinstance(extra, dict):
            raise ProducerError("--data must be a JSON object")
    if event == "newMessage":
        payload = new_message_payload(eml)
        # --data fields go beside `message`; a `message` object is merged.
        if isinstance(extra.get("message"), dict):
            payload["message"].update(extra.pop("message"))
        payload.update(extra)
    else:
        payload = dict(extra)
    payload["event"] = event
    return payload


async def amain(args: argparse.Namespace) -> PublishResult:
    tracer_provider(print_spans=args.print_span)
    subject_for(args.alias, args.event)  # validate before connecting
    payload = build_payload(args.event, read_eml(args.eml), args.data)
    nc = await connect(args.nats)
    try:
        return await publish_event(nc, args.alias, payload, msg_id=args.msg_id)
    finally:
        await nc.drain()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Publish one herald event (default: newMessage with a raw RFC 5322 message) to NATS.")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222",
                        help="NATS URL(s), comma-separated (default %(default)s)")
    parser.add_argument("--alias", required=True, help="alias id, e.g. 64b7f0c2a1b2c3d4e5f60718")
    parser.add_argument("--event", default="newMessage", help="event name (default %(default)s)")
    parser.add_argument("--eml", metavar="FILE",
                        help="raw RFC 5322 message for newMessage (default: a built-in sample)")
    parser.add_argument("--data", metavar="JSON",
                        help="extra payload fields as a JSON object (the whole payload for other events)")
    parser.add_argument("--msg-id", help="Nats-Msg-Id to use (default: a new UUID); reuse it on retry")
    parser.add_argument("--print-span", action="store_true", help="print the producer span to stderr")
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(amain(args))
    except ProducerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (nats.errors.Error, OSError) as exc:
        print(f"error: cannot publish via {args.nats}: {exc!r}", file=sys.stderr)
        return 1
    finally:
        if _tracer_provider is not None:
            _tracer_provider.shutdown()  # flushes exporters
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
