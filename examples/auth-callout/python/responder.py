#!/usr/bin/env python3
"""An auth callout responder for herald: answers `herald.v1.auth.request` on NATS.

herald (with `auth.providers = [..., "callout"]`) sends
    {"dialect": "v1", "username"?, "password"?, "token"?, "alias_id"?, "remote_ip"}
and waits `auth.callout.timeout` for
    {"ok": true, "aliasIds": [...], "user": "...", "ttl": 60}   or   {"ok": false}.

Credentials come from a JSON file:
    {"users":  {"alice@example.com": {"password_hash": "<--hash output>",
                                      "aliasIds": ["64b7f0c2a1b2c3d4e5f60718"],
                                      "user": "alice"}},
     "tokens": {"<api token>": {"aliasIds": ["..."], "user": "ci"}}}

    python responder.py --nats nats://127.0.0.1:4222 --users users.json
    python responder.py --hash 's3cret'        # prints a password_hash

Replace `decide` with a call to your own user store; keep the reply fast (herald
refuses with 504/1013 when it is late, never lets the client in).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import sys
from typing import Any

ITERATIONS = 200_000


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>` (stdlib only)."""
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, ITERATIONS)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"pbkdf2_sha256${ITERATIONS}${b64(salt)}${b64(digest)}"


def verify_password(stored: str, password: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    got = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(got, base64.b64decode(digest))


def decide(request: dict[str, Any], db: dict[str, Any], ttl: int = 60) -> dict[str, Any]:
    """The reply to one request. Unknown or wrong credentials → {"ok": false}."""
    entry = None
    if request.get("username") is not None:
        user = db.get("users", {}).get(str(request["username"]).lower())
        if user and verify_password(user.get("password_hash", ""), str(request.get("password", ""))):
            entry = user
    elif request.get("token") is not None:
        entry = db.get("tokens", {}).get(str(request["token"]))
    if entry is None:
        return {"ok": False, "ttl": 10}
    reply: dict[str, Any] = {"ok": True, "aliasIds": list(entry.get("aliasIds", [])), "ttl": ttl}
    if entry.get("user"):
        reply["user"] = entry["user"]
    return reply


def load_db(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        db = json.load(f)
    db["users"] = {k.lower(): v for k, v in db.get("users", {}).items()}
    return db


async def serve(nats_url: str, subject: str, db: dict[str, Any], ttl: int) -> None:
    import nats  # nats-py

    nc = await nats.connect(nats_url.split(","))

    async def on_request(msg) -> None:
        request: Any = {}
        try:
            request = json.loads(msg.data)
            reply = decide(request, db, ttl)
        except Exception as e:  # a bad request is refused, never allowed
            print(f"bad request: {e}", file=sys.stderr)
            reply = {"ok": False}
        # Never log passwords or tokens: who and the verdict only.
        print(json.dumps({"username": request.get("username") if isinstance(request, dict) else None,
                          "ok": reply["ok"]}), file=sys.stderr, flush=True)
        await msg.respond(json.dumps(reply).encode())

    # A queue group: run several responders and each request is answered once.
    await nc.subscribe(subject, queue="herald-auth", cb=on_request)
    await nc.flush()
    print(json.dumps({"ready": True, "subject": subject}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await nc.drain()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nats", default="nats://127.0.0.1:4222")
    p.add_argument("--subject", default="herald.v1.auth.request")
    p.add_argument("--users", help="JSON credentials file")
    p.add_argument("--ttl", type=int, default=60, help="seconds herald may cache an allow")
    p.add_argument("--hash", metavar="PASSWORD", help="print a password_hash and exit")
    args = p.parse_args(argv)
    if args.hash is not None:
        print(hash_password(args.hash))
        return 0
    if not args.users:
        p.error("--users is required")
    asyncio.run(serve(args.nats, args.subject, load_db(args.users), args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
