"""Tests of the example auth callout responder: `decide` on its own, then end to end
with a real nats-server, the responder process and a herald node whose only provider
is the callout (allow → connected, deny → 401, responder gone → 504).

Binaries: nats-server from $NATS_SERVER, else <repo>/.venv/bin/nats-server, else PATH;
herald from $HERALD_BIN, else <repo>/target/debug/herald. Missing → fail, never skip.

    pytest examples/auth-callout/python
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import responder

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
ALIAS = "64b7f0c2a1b2c3d4e5f60718"
LISTEN_RE = re.compile(r"^herald listening on http://127\.0\.0\.1:(\d+)\s*$")


def db() -> dict:
    return {
        "users": {"alice@example.com": {"password_hash": responder.hash_password("s3cret"),
                                        "aliasIds": [ALIAS], "user": "alice"}},
        "tokens": {"ci-token": {"aliasIds": [ALIAS, "other"]}},
    }


def test_decide_allows_known_credentials_and_denies_the_rest():
    d = db()
    ok = responder.decide({"dialect": "v1", "username": "Alice@example.com", "password": "s3cret",
                           "remote_ip": "127.0.0.1"}, d)
    assert ok == {"ok": True, "aliasIds": [ALIAS], "ttl": 60, "user": "alice"}
    assert responder.decide({"username": "alice@example.com", "password": "nope"}, d)["ok"] is False
    assert responder.decide({"username": "bob@example.com", "password": "s3cret"}, d)["ok"] is False
    assert responder.decide({"token": "ci-token", "alias_id": "other"}, d)["aliasIds"] == [ALIAS, "other"]
    assert responder.decide({"token": "unknown"}, d)["ok"] is False
    assert responder.decide({}, d)["ok"] is False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(env: str, *candidates) -> str:
    for c in (os.environ.get(env), *candidates):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    pytest.fail(f"{env} binary not found (required, never skipped)")


def spawn(argv, log: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(log, "wb"),
                            stdin=subprocess.DEVNULL, start_new_session=True, **kw)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def first_line(p: subprocess.Popen, log: Path) -> str:
    line = p.stdout.readline().decode()
    if not line:
        pytest.fail(f"exited ({p.poll()}) without output:\n{log.read_text(errors='replace')}")
    return line


def wait_tcp(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"port {port} not open")


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def open_ws(port: int, headers: dict):
    """(status, first frame) of one /v1/ws upgrade."""
    try:
        async with connect(f"ws://127.0.0.1:{port}/v1/ws", additional_headers=headers,
                           open_timeout=10) as ws:
            return 101, json.loads(await asyncio.wait_for(ws.recv(), 5))
    except InvalidStatus as e:
        return e.response.status_code, None


def test_herald_asks_the_responder(tmp_path):
    nats_bin = binary("NATS_SERVER", str(REPO / ".venv/bin/nats-server"), shutil.which("nats-server"))
    herald_bin = binary("HERALD_BIN", str(REPO / "target/debug/herald"))
    procs = []
    try:
        nport = free_port()
        procs.append(spawn([nats_bin, "-js", "-a", "127.0.0.1", "-p", str(nport),
                            "-sd", str(tmp_path / "js")], tmp_path / "nats.log"))
        wait_tcp(nport)
        nats_url = f"nats://127.0.0.1:{nport}"

        users = tmp_path / "users.json"
        users.write_text(json.dumps(db()))
        resp = spawn([sys.executable, str(HERE / "responder.py"), "--nats", nats_url,
                      "--users", str(users)], tmp_path / "responder.log")
        procs.append(resp)
        assert json.loads(first_line(resp, tmp_path / "responder.log"))["ready"] is True

        cfg = tmp_path / "herald.toml"
        cfg.write_text(
            '[server]\nlisten = "127.0.0.1:0"\n'
            f'[bus]\nkind = "nats"\n[bus.nats]\nurls = ["{nats_url}"]\n'
            '[auth]\nproviders = ["callout"]\n'
            '[auth.callout]\ntimeout = "1s"\n'
            '[forwardemail]\nauth_backend_timeout = "3s"\n'
            '[shutdown]\ndrain_seconds = 1\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD")}
        node = spawn([herald_bin, "serve", "--config", str(cfg)], tmp_path / "herald.log", env=env)
        procs.append(node)
        m = LISTEN_RE.match(first_line(node, tmp_path / "herald.log"))
        assert m, (tmp_path / "herald.log").read_text(errors="replace")
        port = int(m.group(1))
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "herald not ready"
            time.sleep(0.1)

        status, hello = asyncio.run(open_ws(port, basic("alice@example.com", "s3cret")))
        assert status == 101 and hello == {"event": "connected", "aliasId": ALIAS}, hello
        status, _ = asyncio.run(open_ws(port, basic("alice@example.com", "wrong")))
        assert status == 401

        stop(resp)  # no responder: herald answers 504, never lets the client in
        status, _ = asyncio.run(open_ws(port, basic("carol@example.com", "x")))
        assert status == 504
    finally:
        for p in reversed(procs):
            stop(p)
