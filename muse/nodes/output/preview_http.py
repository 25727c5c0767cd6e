"""The preview's HTTP server: one thread, one selector, a bounded set of clients.

Why not http.server: it spends a thread per connection, idle ones included
(300 idle sockets were 310 threads), and it answers any `Host`, which lets a
web page read the camera through DNS rebinding. Here:

- at most `max_clients` connections; more are answered 503 and closed;
- a connection must send its request within `request_timeout` s (slow or idle
  sockets are closed), and a viewer that stops reading for `stall_timeout` s
  is dropped; a slow viewer skips frames, nothing queues up per client;
- `Host` must be a loopback name when the server listens on loopback;
- when it listens elsewhere, every request needs the random token printed at
  start (`?token=...`, or `Authorization: Bearer ...`);
- everything put into the page is HTML-escaped; responses carry nosniff, a
  strict content security policy and no referrer (the token is in the URL).
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import selectors
import socket
import threading
import time
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

BOUNDARY = "museframe"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "localhost.localdomain"}
MAX_REQUEST_BYTES = 8192

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>MUSE preview - {name}</title>
<style>body{{margin:0;background:#111;display:flex;align-items:center;justify-content:center;height:100vh}}
img{{max-width:100vw;max-height:100vh}}</style></head>
<body><img src="{stream}" alt="MUSE preview"></body></html>"""

SECURITY_HEADERS = (
    "X-Content-Type-Options: nosniff\r\n"
    "Content-Security-Policy: default-src 'none'; img-src 'self'; style-src 'unsafe-inline'\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Cache-Control: no-store\r\n"
)


def is_loopback(host: str) -> bool:
    """Does binding to `host` keep the server on this machine?"""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name part of a Host header: 'localhost:8090' -> 'localhost', '[::1]:8090' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _Client:
    __slots__ = ("sock", "inbuf", "outbuf", "state", "since", "progress", "seen")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.state = "request"  # request -> (stream | closing)
        self.since = now
        self.progress = now
        self.seen = -1


class PreviewServer:
    """Serves `/` (a page), `/stream.mjpg` (MJPEG) and `/frame.jpg` (the newest still) from `latest`
    (muse.nodes.output.preview._Latest: jpeg, serial, clients, cond, still())."""

    def __init__(self, latest: Any, title: str, host: str, port: int, *, max_clients: int = 16,
                 request_timeout: float = 5.0, stall_timeout: float = 10.0, token: str | None = None) -> None:
        self.latest = latest
        self.title = title
        self.max_clients = max_clients
        self.request_timeout = request_timeout
        self.stall_timeout = stall_timeout
        self.loopback_only = is_loopback(host)
        # A token is required exactly when other machines can reach the server.
        self.token = None if self.loopback_only else (token or _random_token())
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        self._listen = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listen.bind((host.strip("[]"), port))
            self._listen.listen(64)
        except OSError:
            self._listen.close()
            raise
        self._listen.setblocking(False)
        self.address: tuple[str, int] = self._listen.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._clients: dict[socket.socket, _Client] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rejected = 0  # connections refused because the pool was full
        self.timed_out = 0  # connections closed for idling or stalling

    # -- control (any thread) ----------------------------------------------------------
    def start(self, name: str = "muse-preview-http") -> None:
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A new frame: let the loop look now, when it has a connection to serve. With none it has nothing to
        do with a frame (a new connection wakes it itself), and a wake-up a frame cost the stream ~0.1 ms of
        host CPU at 4K (this thread's and the sink's send; H200, s15a)."""
        if self._clients:
            self._poke()

    def _poke(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already woken, or closing

    def close(self) -> None:
        self._stop.set()
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sock in (self._listen, self._wake_r, self._wake_w):
            sock.close()

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # -- the loop (its own thread) --------------------------------------------------------
    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listen, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._sel = sel
        try:
            while not self._stop.is_set():
                for key, events in sel.select(timeout=0.25):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, OSError):
                            pass
                    else:
                        client = self._clients.get(key.fileobj)
                        if client is None:
                            continue
                        if events & selectors.EVENT_READ:
                            self._read(client)
                        if events & selectors.EVENT_WRITE and client.sock in self._clients:
                            self._write(client)
                self._push_frames()
                self._expire()
        finally:
            for client in list(self._clients.values()):
                self._drop(client)
            sel.close()

    def _accept(self) -> None:
        now = time.monotonic()
        for _ in range(64):
            try:
                sock, _ = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. out of file descriptors: try again on the next event
            sock.setblocking(False)
            if len(self._clients) >= self.max_clients:
                self.rejected += 1
                try:
                    sock.send(_response(503, "text/plain", b"too many preview viewers; close one and retry\n"))
                except OSError:
                    pass
                sock.close()
                continue
            self._clients[sock] = _Client(sock, now)
            self._sel.register(sock, selectors.EVENT_READ, "client")

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        if client.state != "request":
            return  # a viewer has nothing more to say; what it sends is ignored
        client.inbuf += data
        end = client.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(client.inbuf) > MAX_REQUEST_BYTES:
                self._reply(client, 431, "text/plain", b"request too large\n")
            return
        self._handle(client, bytes(client.inbuf[:end]))

    def _handle(self, client: _Client, head: bytes) -> None:
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                key, sep, value = line.partition(":")
                if sep:
                    headers[key.strip().lower()] = value.strip()
        except ValueError:
            self._reply(client, 400, "text/plain", b"bad request\n")
            return
        if method not in ("GET", "HEAD"):
            self._reply(client, 405, "text/plain", b"only GET\n", extra="Allow: GET, HEAD\r\n")
            return
        if self.loopback_only and host_name(headers.get("host", "")) not in LOOPBACK_NAMES:
            # DNS rebinding: a web page whose name now points at 127.0.0.1 sends its own name here.
            self._reply(client, 403, "text/plain", b"this preview only answers to localhost / 127.0.0.1\n")
            return
        url = urlsplit(target)
        if self.token is not None and not self._token_ok(url.query, headers):
            self._reply(client, 403, "text/plain", b"missing or wrong token: open the preview URL MUSE printed at start\n")
            return
        head_only = method == "HEAD"
        if url.path in ("/", "/index.html"):
            stream = "/stream.mjpg" + (f"?token={quote(self.token)}" if self.token else "")
            body = PAGE.format(name=html.escape(self.title), stream=html.escape(stream, quote=True)).encode()
            self._reply(client, 200, "text/html; charset=utf-8", body, head_only=head_only)
        elif url.path == "/frame.jpg":
            jpeg = self.latest.still()
            if jpeg is None:
                self._reply(client, 503, "text/plain", b"no frame yet\n")
            else:
                self._reply(client, 200, "image/jpeg", jpeg, head_only=head_only)
        elif url.path == "/stream.mjpg":
            self._start_stream(client, head_only)
        else:
            self._reply(client, 404, "text/plain", b"not found; try / or /stream.mjpg or /frame.jpg\n")

    def _token_ok(self, query: str, headers: dict[str, str]) -> bool:
        given = (parse_qs(query).get("token") or [""])[0]
        auth = headers.get("authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), (self.token or "").encode())

    def _reply(self, client: _Client, code: int, ctype: str, body: bytes, *, head_only: bool = False, extra: str = "") -> None:
        client.outbuf += _response(code, ctype, b"" if head_only else body, length=len(body), extra=extra)
        client.state = "closing"
        self._want_write(client)

    def _start_stream(self, client: _Client, head_only: bool) -> None:
        client.outbuf += (f"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary={BOUNDARY}\r\n"
                          f"{SECURITY_HEADERS}Connection: close\r\n\r\n").encode()
        if head_only:
            client.state = "closing"
            self._want_write(client)
            return
        client.state = "stream"
        with self.latest.cond:
            self.latest.clients += 1
        first = self.latest.still()  # something to look at before the next frame
        if first is not None:
            client.outbuf += _part(first)
            client.seen = self.latest.serial
        self._want_write(client)

    def _push_frames(self) -> None:
        with self.latest.cond:
            jpeg, serial = self.latest.jpeg, self.latest.serial
        if jpeg is None:
            return
        for client in list(self._clients.values()):
            # A viewer still busy with the last frame skips this one: nothing piles up per client.
            if client.state == "stream" and client.seen != serial and not client.outbuf:
                client.outbuf += _part(jpeg)
                client.seen = serial
                self._want_write(client)

    def _want_write(self, client: _Client) -> None:
        if client.outbuf:
            client.progress = time.monotonic()
            self._sel.modify(client.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, "client")

    def _write(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        del client.outbuf[:sent]
        client.progress = time.monotonic()
        if not client.outbuf:
            if client.state == "closing":
                self._drop(client)
            else:
                self._sel.modify(client.sock, selectors.EVENT_READ, "client")

    def _expire(self) -> None:
        now = time.monotonic()
        for client in list(self._clients.values()):
            idle = client.state == "request" and now - client.since > self.request_timeout
            stalled = bool(client.outbuf) and now - client.progress > self.stall_timeout
            if idle or stalled:
                self.timed_out += 1
                self._drop(client)

    def _drop(self, client: _Client) -> None:
        if self._clients.pop(client.sock, None) is None:
            return
        if client.state == "stream":
            with self.latest.cond:
                self.latest.clients -= 1
        try:
            self._sel.unregister(client.sock)
        except (KeyError, ValueError, OSError):
            pass
        client.sock.close()


def _response(code: int, ctype: str, body: bytes, *, length: int | None = None, extra: str = "") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
              431: "Request Header Fields Too Large", 503: "Service Unavailable"}.get(code, "Error")
    head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body) if length is None else length}\r\n"
            f"{SECURITY_HEADERS}{extra}Connection: close\r\n\r\n")
    return head.encode() + body


def _part(jpeg: bytes) -> bytes:
    return f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n"


def _random_token() -> str:
    import secrets

    return secrets.token_urlsafe(18)


__all__ = ["PreviewServer", "is_loopback", "host_name", "BOUNDARY", "PAGE"]
