"""The preview server against hostile clients (issue 19): DNS rebinding (Host
check), markup in the title, a token when other machines can reach it, and a
bounded client pool with idle timeouts instead of a thread per socket."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import cv2
import pytest
import torch

from muse.graph.payloads import Frame
from muse.graph.testing import build_node, make_context
from muse.nodes.output import Preview
from muse.nodes.output.preview import _Latest
from muse.nodes.output.preview_http import PreviewServer, host_name, is_loopback


def raw_get(port: int, path: str = "/", host: str | None = "127.0.0.1", extra: str = "", host_ip: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection((host_ip, port), timeout=5) as s:
        req = f"GET {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "") + extra + "\r\n"
        s.sendall(req.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"multipart" in data and data.count(b"--museframe") >= 1 and data.endswith(b"\r\n"):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
def preview(astronaut):
    nodes = []

    def start(**params):
        node = build_node(Preview, {"port": 0, "window": "off", **params})
        ctx = make_context()
        node.open(ctx)
        node.process(frame=Frame(torch.from_numpy(cv2.resize(astronaut, (160, 160)))))
        nodes.append(node)
        return node, ctx

    yield start
    for n in nodes:
        n.close()


def test_host_header_must_be_a_loopback_name(preview):
    node, _ = preview()
    port = node._server.address[1]
    for good in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "[::1]:8090"):
        assert raw_get(port, "/frame.jpg", host=good)[0] == 200, good
    for evil in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "", None):
        code, _, body = raw_get(port, "/frame.jpg", host=evil)
        assert code == 403 and b"localhost" in body, evil


def test_everything_rendered_is_escaped(preview):
    node, _ = preview(title='<script>alert("x")</script><img src=x onerror=alert(1)>')
    code, headers, body = raw_get(node._server.address[1], "/")
    page = body.decode()
    assert code == 200 and "<script>" not in page and "onerror=alert(1)>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert headers["x-content-type-options"] == "nosniff" and "default-src 'none'" in headers["content-security-policy"]


def test_token_is_required_when_reachable_from_other_machines(preview, caplog):
    caplog.set_level("WARNING")
    node, ctx = preview(host="0.0.0.0")
    url = ctx.stats.info["url"]
    token = node._server.token
    assert token and len(token) >= 20 and f"?token={token}" in url
    port = node._server.address[1]
    assert raw_get(port, "/frame.jpg", host="192.168.1.20")[0] == 403
    assert raw_get(port, "/frame.jpg?token=wrong", host="192.168.1.20")[0] == 403
    assert raw_get(port, f"/frame.jpg?token={token}", host="192.168.1.20")[0] == 200  # any Host: the token is the check
    assert raw_get(port, "/frame.jpg", host="192.168.1.20", extra=f"Authorization: Bearer {token}\r\n")[0] == 200
    page = urllib.request.urlopen(url, timeout=5).read().decode()
    assert f"/stream.mjpg?token={token}" in page  # the page's own stream link carries it
    resp = urllib.request.urlopen(url.split("?")[0] + f"stream.mjpg?token={token}", timeout=5)
    assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
    resp.close()
    assert f"token={token}" in caplog.text and "reachable from other machines" in caplog.text  # printed at start


def test_loopback_has_no_token_and_binds_are_classified():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.com")
    assert host_name("LocalHost:8090") == "localhost" and host_name("[::1]:1") == "::1" and host_name("::1") == "::1"


def _latest_with_frame(astronaut) -> _Latest:
    latest = _Latest()
    latest.publish(cv2.resize(astronaut, (64, 64)))
    return latest


def test_idle_sockets_are_bounded_and_time_out_without_threads(astronaut):
    latest = _latest_with_frame(astronaut)
    server = PreviewServer(latest, "t", "127.0.0.1", 0, max_clients=16, request_timeout=0.5)
    latest.on_publish = server.wake
    server.start()
    port = server.address[1]
    threads_before = threading.active_count()
    idle = []
    try:
        for _ in range(300):  # 300 idle connections: 310 threads with http.server
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.3)
        assert threading.active_count() <= threads_before + 1
        assert server.client_count <= 16 and server.rejected > 0
        assert server.rejected + server.timed_out + server.client_count == 300  # every socket: served, refused or timed out
        deadline = time.monotonic() + 10
        while server.client_count and time.monotonic() < deadline:  # idle ones time out
            time.sleep(0.1)
        assert server.client_count == 0 and server.timed_out >= 1
        assert raw_get(port, "/frame.jpg")[0] == 200  # and a real viewer is served again
    finally:
        for s in idle:
            s.close()
        server.close()
    print(f"\npreview: 300 idle sockets -> {server.rejected} refused (pool of 16), {server.timed_out} timed out, "
          f"threads {threads_before} -> at most {threads_before + 1}")


def test_a_viewer_that_stops_reading_is_dropped_and_does_not_hold_others(astronaut):
    latest = _latest_with_frame(astronaut)
    server = PreviewServer(latest, "t", "127.0.0.1", 0, max_clients=4, stall_timeout=1.0)
    latest.on_publish = server.wake
    server.start()
    port = server.address[1]
    big = cv2.resize(astronaut, (1280, 720))  # large JPEGs fill the socket buffers
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", port))
    stuck.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: localhost\r\n\r\n")  # ... and never reads
    try:
        deadline = time.monotonic() + 15
        while server.timed_out == 0 and time.monotonic() < deadline:
            latest.publish(big)
            time.sleep(0.05)
            assert raw_get(port, "/frame.jpg")[0] == 200  # others are served meanwhile
        assert server.timed_out >= 1
        assert latest.clients == 0
    finally:
        stuck.close()
        server.close()


def test_bad_requests_get_clear_codes(astronaut):
    latest = _latest_with_frame(astronaut)
    server = PreviewServer(latest, "t", "127.0.0.1", 0)
    server.start()
    port = server.address[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert b" 405 " in s.recv(4096)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Junk: " + b"a" * 10000)
            assert b" 431 " in s.recv(4096)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01garbage\r\n\r\n")  # a TLS hello or noise
            assert b" 400 " in s.recv(4096)
        assert raw_get(port, "/nope")[0] == 404
    finally:
        server.close()
