"""streaming.daphne.install through a real daphne process (shim_app.py) and real clients over loopback."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from devstack.ports import free_port
from streaming.codes import CloseCode
from streaming.daphne import close, flow_control, install

pytestmark = pytest.mark.e2e

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[3]
DAPHNE = Path(sys.executable).with_name("daphne")
APP = "tests.streaming.daphne.shim_app:application"
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 0.02
FLOOD_TIMEOUT_SECONDS = 15.0

CLIENT_RECEIVE_BUFFER = 64 * 1024
"""SO_RCVBUF of the non-reading client, so what the kernels can hold is bounded by the server's tcp_wmem maximum."""
KERNEL_BUFFER_BOUND = 16 * 1024 * 1024
"""Bytes the two sockets' kernel buffers may hold (server send buffer autotunes up to tcp_wmem max, 4 MiB here)."""
FRAME_OVERHEAD = 16
RSS_GROWTH_LIMIT_KB = 50 * 1024
CLOSE_HANDSHAKE_ABORT_SECONDS = close.CLOSE_HANDSHAKE_TIMEOUT_SECONDS + 0.5
"""A close the client never reads ends with a reset after the close handshake timeout (it fires after T-1 to T s)."""
APP_ABORT_SECONDS = 1.0

TCP_ESTABLISHED = 1
TCP_CLOSE = 7


class Daphne:
    """One daphne subprocess serving shim_app (or *app*, which must answer ``GET /stats``) on a free loopback port,
    its output captured to files."""

    def __init__(
        self, log_dir: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (), app: str = APP
    ) -> None:
        self.port = free_port()
        self.stderr_path = log_dir / f"daphne-{self.port}.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [str(DAPHNE), "-b", "127.0.0.1", "-p", str(self.port), *args, app],
                cwd=REPO_ROOT,
                env={**os.environ, **(env or {})},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        wait_for(self._answers, START_TIMEOUT_SECONDS, "daphne to serve HTTP")

    def _answers(self) -> bool:
        assert self.process.poll() is None, self.stderr()
        try:
            self.stats()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            return json.load(response)

    def stats(self) -> dict[str, dict[str, Any]]:
        return self.get("/stats")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


def wait_for(probe: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``probe`` until it returns something truthy, for at most ``timeout`` seconds (cross-process waits)."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_SECONDS)
    return value


@pytest.fixture(scope="module")
def daphne(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daphne]:
    server = Daphne(tmp_path_factory.mktemp("daphne"))
    yield server
    server.stop()


@pytest.fixture
def fresh_daphne(tmp_path: Path) -> Iterator[Daphne]:
    server = Daphne(tmp_path)
    yield server
    server.stop()


def close_received(daphne: Daphne, code: int | None, reason: str | None) -> ConnectionClosed:
    query = urllib.parse.urlencode({k: v for k, v in {"code": code, "reason": reason}.items() if v is not None})
    with connect(daphne.ws_url(f"/close?{query}"), open_timeout=5, close_timeout=5) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.sent is not None, "no clean closing handshake"
    assert closed.value.rcvd_then_sent, "the server did not close first"
    return closed.value


@pytest.mark.parametrize("code", [1000, 1001, 1008, 1011, 3000, 4401, 4409])
def test_close_code_and_reason_reach_the_client(daphne: Daphne, code: int) -> None:
    closed = close_received(daphne, code, f"closing with {code} ✓")
    assert (closed.rcvd.code, closed.rcvd.reason) == (code, f"closing with {code} ✓")
    assert "Traceback" not in daphne.stderr()


def test_close_without_code_is_1000(daphne: Daphne) -> None:
    assert close_received(daphne, None, None).rcvd.code == 1000


@pytest.mark.parametrize("code", [999, 1005, 1006, 1010, 1015, 2000, 5000])
def test_unsendable_close_code_goes_out_as_1011(daphne: Daphne, code: int) -> None:
    closed = close_received(daphne, code, "bad code")
    assert (closed.rcvd.code, closed.rcvd.reason) == (1011, "bad code")
    assert f"WebSocket close code {code} cannot be sent; closing with 1011" in daphne.stderr()
    assert "Traceback" not in daphne.stderr()


def test_long_reason_is_truncated_on_a_character_boundary(daphne: Daphne) -> None:
    reason = "é" * 100  # 200 bytes of two-byte characters
    closed = close_received(daphne, 4000, reason)
    assert closed.rcvd.reason == "é" * 61  # 122 bytes: the 62nd character would straddle byte 123


def test_unpatched_daphne_sends_1011_only_through_its_crash_path(tmp_path: Path) -> None:
    server = Daphne(tmp_path, env={"SHIM_APP_INSTALL": "0"})
    try:
        with connect(server.ws_url("/close?code=1011&reason=lost"), open_timeout=5, close_timeout=5) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "")
        assert "Traceback" in server.stderr() and "invalid close code 1011" in server.stderr()
    finally:
        server.stop()


def test_install_is_idempotent_and_a_no_op_without_daphne() -> None:
    script = """
import sys
from streaming.codes import CloseCode
from streaming.daphne import close, flow_control, install
assert install.install() is False and "daphne.server" not in sys.modules
import daphne.server, daphne.ws_protocol
assert install.install() is True
patched = (daphne.server.Server.create_application, daphne.ws_protocol.WebSocketProtocol.handle_reply)
assert install.install() is True
assert patched == (daphne.server.Server.create_application, daphne.ws_protocol.WebSocketProtocol.handle_reply)
assert flow_control.get_flow_control({"type": "websocket"}) is None
import autobahn.websocket.protocol
assert autobahn.websocket.protocol.pformat is install.DeferredPformat
"""
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, timeout=30)


def test_deferred_pformat_reads_as_pformat_when_formatted() -> None:
    import pprint

    settings = [(f"option{number}", number, "WebSocketServerFactory") for number in range(40)]
    deferred = install.DeferredPformat(settings)
    # autobahn logs it through the template "\n{attrs}", which the logger fills in as str.format does.
    assert str(deferred) == f"{deferred}" == "\n{}".format(deferred)[1:] == pprint.pformat(settings)  # noqa: UP032


def test_sanitize_close() -> None:
    assert close.sanitize_close(None, None) == (1000, b"")
    assert close.sanitize_close(4409, "already connected") == (4409, b"already connected")
    assert close.sanitize_close(CloseCode.ALREADY_CONNECTED, None) == (4409, b"")
    assert type(close.sanitize_close(CloseCode.ALREADY_CONNECTED, None)[0]) is int
    assert close.sanitize_close(1015, "x") == (1011, b"x")
    assert close.sanitize_close(True, None) == (1011, b"")
    assert close.sanitize_close(1001, "a" * 200) == (1001, b"a" * 123)


def test_write_text_frames_arrive_intact_and_in_order_with_asgi_sends(daphne: Daphne) -> None:
    from tests.streaming.daphne.shim_app import FRAME_SIZES, frame_payload

    with connect(f"ws://127.0.0.1:{daphne.port}/frames", max_size=None) as client:
        received = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                received.append(client.recv())
    expected = []
    for number, size in enumerate(FRAME_SIZES):
        expected += [frame_payload(size).decode(), f"asgi {number}"]
    assert received == expected  # text frames (str), the "after close" write dropped
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert "Traceback" not in daphne.stderr()


def test_text_frame_header_encodes_the_three_lengths() -> None:
    assert flow_control.text_frame_header(125) == b"\x81\x7d"
    assert flow_control.text_frame_header(126) == b"\x81\x7e\x00\x7e"
    assert flow_control.text_frame_header(65535) == b"\x81\x7e\xff\xff"
    assert flow_control.text_frame_header(65536) == b"\x81\x7f" + (65536).to_bytes(8, "big")


def open_non_reading_client(daphne: Daphne, path: str) -> socket.socket:
    """A raw WebSocket client that completes the handshake, then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RECEIVE_BUFFER)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", daphne.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{daphne.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while not response.endswith(b"\r\n\r\n"):
        response += sock.recv(1)  # byte by byte, so that no frame is read
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def flood_stats(daphne: Daphne, connection_id: str, key: str, on_poll: Callable[[], None] = lambda: None) -> dict:
    def probe() -> dict[str, Any] | None:
        on_poll()
        stats = daphne.stats().get(connection_id, {})
        return stats if key in stats else None

    return wait_for(probe, FLOOD_TIMEOUT_SECONDS, f"{key} of flood {connection_id}")


def test_flow_control_holds_frames_in_the_app_and_a_slow_consumer_close_aborts(daphne: Daphne) -> None:
    baseline_kb = daphne.rss_kb()
    peak_kb = baseline_kb

    def sample_rss() -> None:
        nonlocal peak_kb
        peak_kb = max(peak_kb, daphne.rss_kb())

    with open_non_reading_client(daphne, "/flood?id=outbox&mode=outbox") as client:
        stats = flood_stats(daphne, "outbox", "disconnect_code", sample_rss)
        wait_for(lambda: tcp_state(client) != TCP_ESTABLISHED, 1, "the client's socket to leave ESTABLISHED")
        assert tcp_state(client) == TCP_CLOSE  # reset, not FIN: the close frame never got through

    frame = stats["frame_bytes"] + FRAME_OVERHEAD
    assert stats["high_water_mark"] == 64 * 1024
    assert stats["first_unwritable_at"] <= KERNEL_BUFFER_BOUND + stats["high_water_mark"] + frame
    assert stats["buffered_at_overflow"] <= stats["high_water_mark"] + frame
    assert stats["disconnect_code"] == 1006
    assert close.CLOSE_HANDSHAKE_TIMEOUT_SECONDS - 1 < stats["disconnected_at"] - stats["closed_at"]
    assert stats["disconnected_at"] - stats["closed_at"] < CLOSE_HANDSHAKE_ABORT_SECONDS
    assert peak_kb - baseline_kb < RSS_GROWTH_LIMIT_KB
    assert "Traceback" not in daphne.stderr()


def test_wait_writable_returns_when_a_stalled_client_goes_away(daphne: Daphne) -> None:
    client = open_non_reading_client(daphne, "/flood?id=wait&mode=wait")
    stats = flood_stats(daphne, "wait", "stalled_at")
    assert stats["stalled_at"] <= KERNEL_BUFFER_BOUND + stats["high_water_mark"] + stats["frame_bytes"]
    assert stats["buffered_at_stall"] <= stats["high_water_mark"] + stats["frame_bytes"] + FRAME_OVERHEAD
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # reset

    stats = flood_stats(daphne, "wait", "disconnect_code")
    assert stats["wait_returned_closed"] is True
    assert stats["disconnect_code"] == 1006


def test_ignoring_flow_control_buffers_everything_and_abort_drops_the_client(fresh_daphne: Daphne) -> None:
    """The control: an app that sends regardless makes daphne hold it all, which is what the extension prevents."""
    baseline_kb = fresh_daphne.rss_kb()
    with open_non_reading_client(fresh_daphne, "/flood?id=ignore&mode=ignore") as client:
        stats = flood_stats(fresh_daphne, "ignore", "buffered_after_flood")
        assert stats["writable_after_flood"] is False
        assert stats["buffered_after_flood"] >= stats["sent"] - KERNEL_BUFFER_BOUND
        assert fresh_daphne.rss_kb() - baseline_kb > RSS_GROWTH_LIMIT_KB

        fresh_daphne.get("/abort?id=ignore")
        stats = flood_stats(fresh_daphne, "ignore", "disconnect_code")
        assert stats["disconnect_code"] == 1006
        assert stats["disconnected_at"] - stats["closed_at"] < APP_ABORT_SECONDS
        wait_for(lambda: tcp_state(client) == TCP_CLOSE, 1, "the client's socket to be reset")


# --- the inbound side: streaming.daphne.inbound -----------------------------------------------------------------------

INBOUND_BUDGET = 1024 * 1024
"""``STREAM_CLIENT_INBOUND_BYTES``'s default, which shim_app (no gateway settings) runs with."""
FLOOD_FRAME_BYTES = 60 * 1024
FLOOD_FRAMES = 512
"""30 MiB: far more than the budget and the two sockets' kernel buffers can hold."""
READ_CHUNK_BYTES = 64 * 1024
"""What Twisted reads from a socket at a time: autobahn still handles the chunk it is in when the budget pauses."""
FLOOD_GROWTH_KB = FLOOD_FRAME_BYTES * FLOOD_FRAMES // 2 // 1024
"""Half the flood: what an unbounded queue makes daphne's RSS grow by, at least."""
BLOCKED_SECONDS = 1.0
KEEP_ALIVE_WAIT_SECONDS = 4.0
"""Twice what a ping every second with a second to answer takes to drop a client (daphne checks once a second)."""
"""A send that makes no progress for this long is blocked by back-pressure."""


def client_frame(payload: bytes) -> bytes:
    """A masked (all-zero key, so the payload goes as is) unfragmented text frame from a client."""
    length = len(payload)
    if length < 126:
        header = bytes((0x81, 0x80 | length))
    elif length < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
    return header + b"\0\0\0\0" + payload


def send_until_blocked(sock: socket.socket, data: memoryview) -> int:
    """Send *data* until done or until the socket takes nothing for ``BLOCKED_SECONDS``; the bytes sent."""
    sock.settimeout(BLOCKED_SECONDS)
    sent = 0
    while sent < len(data):
        try:
            sent += sock.send(data[sent:])
        except TimeoutError:
            break
    return sent


def flood_held_consumer(
    daphne: Daphne, connection_id: str, hold: str = "1"
) -> tuple[socket.socket, memoryview, int]:
    """Open a client whose app holds its messages, send it ``FLOOD_FRAMES`` frames until its sends block."""
    sock = open_non_reading_client(daphne, f"/inbound?id={connection_id}&hold={hold}")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_RECEIVE_BUFFER)
    stream = memoryview(client_frame(b"x" * FLOOD_FRAME_BYTES) * FLOOD_FRAMES)
    return sock, stream, send_until_blocked(sock, stream)


def test_a_client_flooding_a_held_consumer_is_paused_within_its_inbound_budget(daphne: Daphne) -> None:
    baseline_kb = daphne.rss_kb()
    sock, stream, sent = flood_held_consumer(daphne, "attacker")
    with sock:
        assert daphne.rss_kb() - baseline_kb < FLOOD_GROWTH_KB
        assert sent < len(stream)  # back-pressure reached the client
        held = daphne.stats()["attacker"]
        assert held["paused"] is True
        assert INBOUND_BUDGET < held["queue_bytes"] <= INBOUND_BUDGET + READ_CHUNK_BYTES + FLOOD_FRAME_BYTES

        with connect(daphne.ws_url("/inbound?id=victim"), open_timeout=5, close_timeout=5) as victim:
            victim.send("hello")
            assert victim.recv(timeout=5) == "5"

        daphne.get("/release?id=attacker")
        sock.settimeout(FLOOD_TIMEOUT_SECONDS)
        sock.sendall(stream[sent:])
        payload_bytes = FLOOD_FRAME_BYTES * FLOOD_FRAMES
        wait_for(lambda: daphne.stats()["attacker"]["received_bytes"] == payload_bytes, FLOOD_TIMEOUT_SECONDS,
                 "the released consumer to take every message")
        assert daphne.stats()["attacker"]["paused"] is False
    assert "Traceback" not in daphne.stderr()


def test_a_close_sent_while_reading_is_paused_completes_its_handshake(daphne: Daphne) -> None:
    """The server reads again once its close frame is out: the client's reply arrives, no reset 2 s later."""
    sock, stream, sent = flood_held_consumer(daphne, "closing", hold="close")
    with sock:
        assert sent < len(stream) and daphne.stats()["closing"]["paused"] is True
        daphne.get("/release?id=closing")
        sock.settimeout(5)
        header = b""
        while len(header) < 4:
            header += sock.recv(4 - len(header))
        assert header == b"\x88\x02" + struct.pack("!H", 1000)
        frame_bytes = len(stream) // FLOOD_FRAMES
        sock.sendall(stream[sent:sent + (-sent) % frame_bytes])  # the rest of the frame the block cut
        sock.sendall(bytes((0x88, 0x82)) + b"\0\0\0\0" + struct.pack("!H", 1000))
        stats = flood_stats(daphne, "closing", "disconnect_code")
    assert stats["disconnect_code"] == 1000  # the reply was read; unread, the close handshake timeout makes it 1006


def test_keep_alive_does_not_drop_a_client_while_its_reading_is_paused(tmp_path: Path) -> None:
    """daphne pings every ``--ping-interval`` and drops a client whose pong is late; a paused client's pong waits
    unread, so it is not pinged meanwhile. Pinged every second with a second to answer, it outlives KEEP_ALIVE_WAIT."""
    server = Daphne(tmp_path, args=("--ping-interval", "1", "--ping-timeout", "1"))
    try:
        sock, stream, sent = flood_held_consumer(server, "keep-alive")
        with sock:
            time.sleep(KEEP_ALIVE_WAIT_SECONDS)  # nothing to wait for: what must not happen is a drop meanwhile
            assert server.stats()["keep-alive"]["paused"] is True
            server.get("/release?id=keep-alive")
            sock.settimeout(FLOOD_TIMEOUT_SECONDS)
            sock.sendall(stream[sent:])
            wait_for(
                lambda: server.stats()["keep-alive"]["received_bytes"] == FLOOD_FRAME_BYTES * FLOOD_FRAMES,
                FLOOD_TIMEOUT_SECONDS, "the released consumer to take every message",
            )
            assert "disconnect_code" not in server.stats()["keep-alive"]
    finally:
        server.stop()


def test_without_the_shim_a_held_consumer_makes_daphne_hold_the_whole_flood(tmp_path: Path) -> None:
    """The control: daphne alone reads everything into the application's queue, and its memory grows by it."""
    server = Daphne(tmp_path, {"SHIM_APP_INSTALL": "0"})
    try:
        baseline_kb = server.rss_kb()
        sock, stream, sent = flood_held_consumer(server, "unbounded")
        with sock:
            assert sent == len(stream)
            wait_for(lambda: server.rss_kb() - baseline_kb > FLOOD_GROWTH_KB, FLOOD_TIMEOUT_SECONDS,
                     "daphne's memory to grow by the flood")
    finally:
        server.stop()


def test_a_message_over_the_limit_gets_an_error_status_and_close_1009(daphne: Daphne) -> None:
    with connect(daphne.ws_url("/inbound?id=big"), open_timeout=5, close_timeout=5, max_size=None) as ws:
        ws.send("x" * (2 << 20))
        status = json.loads(ws.recv(timeout=5))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    message = f"message too large: {2 << 20} bytes, the limit is {1 << 20}, closing"
    assert status == [{"ev": "status", "status": "error", "message": message}]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
    assert closed.value.rcvd.reason == "message too big"


def test_a_message_just_under_the_limit_is_delivered(daphne: Daphne) -> None:
    size = (1 << 20) - 16
    with connect(daphne.ws_url("/inbound?id=just-under"), open_timeout=5, close_timeout=5) as ws:
        ws.send("x" * size)
        assert ws.recv(timeout=5) == str(size)
