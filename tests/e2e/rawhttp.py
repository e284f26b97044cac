"""Raw-socket HTTP/1.1 client helpers for the end-to-end tests.

Everything here talks to loopback (or a UNIX socket) only, every read has a timeout and every
loop is bounded by a deadline, so a misbehaving server makes a test fail, never hang.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

DEFAULT_TIMEOUT = float(os.environ.get("E2E_IO_TIMEOUT", "5"))
MAX_RESPONSE = 64 << 20  # refuse to buffer more than this from one server


class ProtocolError(AssertionError):
    """The server sent bytes that are not a valid HTTP/1.1 response."""


@dataclass
class Response:
    status_line: bytes
    status: int
    headers: list[tuple[bytes, bytes]]  # names lowercased, values as sent, in wire order
    body: bytes  # de-chunked
    raw_head: bytes
    framing: str  # "length" | "chunked" | "close" | "none"
    chunks: list[bytes] = field(default_factory=list)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: str | bytes, default=None):
        name = name.encode() if isinstance(name, str) else name
        for k, v in self.headers:
            if k == name.lower():
                return v
        return default

    def header_list(self, name: str | bytes) -> list[bytes]:
        name = name.encode() if isinstance(name, str) else name
        return [v for k, v in self.headers if k == name.lower()]

    def compare_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers minus the server-specific defaults at the front (date, server)."""
        headers = list(self.headers)
        while headers and headers[0][0] in (b"date", b"server"):
            headers.pop(0)
        return headers

    def norm(self) -> tuple:
        """What must be equal between cppuvicorn and uvicorn."""
        return (self.status_line, tuple(self.compare_headers()), self.body, self.framing)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        import json

        return json.loads(self.body)

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 200 else self.body[:200] + b"..."
        return f"Response({self.status_line!r}, headers={self.headers!r}, body={body!r}, framing={self.framing})"


def connect(server, timeout: float = DEFAULT_TIMEOUT) -> "Conn":
    return Conn(server, timeout)


class Conn:
    """One client connection with its own read buffer."""

    def __init__(self, server, timeout: float = DEFAULT_TIMEOUT):
        self.timeout = timeout
        if getattr(server, "uds", None):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(server.uds)
        else:
            host = server.host
            assert host in ("127.0.0.1", "::1", "localhost"), f"loopback only, got {host}"
            sock = socket.create_connection((host, server.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    # -------------------------------------------------------------- basic I/O
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def _fill(self, deadline: float) -> bool:
        """Read once into the buffer. False on EOF. Raises TimeoutError at the deadline."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for the server")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(262144)
        except socket.timeout:
            raise TimeoutError("timed out waiting for the server") from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        if len(self.buf) > MAX_RESPONSE:
            raise ProtocolError("response larger than the test limit")
        return True

    def _read_until(self, marker: bytes, deadline: float) -> bytes:
        start = 0
        while True:
            idx = self.buf.find(marker, start)
            if idx >= 0:
                out = bytes(self.buf[: idx + len(marker)])
                del self.buf[: idx + len(marker)]
                return out
            start = max(0, len(self.buf) - len(marker) + 1)
            if not self._fill(deadline):
                raise ProtocolError(f"connection closed before {marker!r}; got {bytes(self.buf)!r}")

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise ProtocolError(f"connection closed after {len(self.buf)} of {n} body bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_available(self, wait: float = 0.2) -> bytes:
        """Whatever arrives within ``wait`` seconds (maybe nothing). Does not consume EOF."""
        deadline = time.monotonic() + wait
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_until_close(self, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while self._fill(deadline):
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def is_closed(self, timeout: float = 2.0) -> bool:
        """True if the server closes the connection within ``timeout`` without sending more.

        Any byte that arrives instead is a failure (returned as a ProtocolError)."""
        deadline = time.monotonic() + timeout
        if self.buf:
            raise ProtocolError(f"unexpected bytes before close: {bytes(self.buf)!r}")
        try:
            got = self._fill(deadline)
        except TimeoutError:
            return False
        if got:
            raise ProtocolError(f"unexpected bytes instead of close: {bytes(self.buf)!r}")
        return True

    # -------------------------------------------------------------- HTTP
    def read_response(self, method: str = "GET", timeout: float | None = None, allow_interim: bool = False) -> Response:
        """Read one complete response. 1xx responses are returned only if allow_interim."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            head = self._read_until(b"\r\n\r\n", deadline)
            status_line, headers = parse_head(head)
            status = int(status_line.split(b" ")[1])
            if 100 <= status < 200:
                resp = Response(status_line, status, headers, b"", head, "none")
                if allow_interim:
                    return resp
                continue
            break
        te = [v.lower() for k, v in headers if k == b"transfer-encoding"]
        cl = [v for k, v in headers if k == b"content-length"]
        chunks: list[bytes] = []
        trailers: list[tuple[bytes, bytes]] = []
        if method == "HEAD" or status in (204, 304):
            body, framing = b"", "none"
        elif te:
            if te != [b"chunked"]:
                raise ProtocolError(f"unexpected transfer-encoding {te!r}")
            if cl:
                raise ProtocolError("response has both content-length and transfer-encoding")
            body, chunks, trailers = self._read_chunked(deadline)
            framing = "chunked"
        elif cl:
            if len(set(cl)) != 1:
                raise ProtocolError(f"conflicting content-length {cl!r}")
            body = self._read_exact(int(cl[0]), deadline)
            framing = "length"
        else:
            while self._fill(deadline):
                pass
            body = bytes(self.buf)
            self.buf.clear()
            framing = "close"
        return Response(status_line, status, headers, body, head, framing, chunks, trailers)

    def _read_chunked(self, deadline: float):
        chunks = []
        for _ in range(1_000_000):
            line = self._read_until(b"\r\n", deadline)[:-2]
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {line!r}") from None
            if size == 0:
                trailers = []
                while True:
                    tl = self._read_until(b"\r\n", deadline)
                    if tl == b"\r\n":
                        return b"".join(chunks), chunks, trailers
                    name, _, value = tl[:-2].partition(b":")
                    trailers.append((name.lower(), value.strip()))
            chunks.append(self._read_exact(size, deadline))
            if self._read_exact(2, deadline) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
        raise ProtocolError("too many chunks")

    def request(self, method: str = "GET", path: str = "/", headers=None, body: bytes | None = None,
                version: str = "1.1", timeout: float | None = None) -> Response:
        self.send(build_request(method, path, headers, body, version))
        return self.read_response(method, timeout=timeout)


def parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    if not head.endswith(b"\r\n\r\n"):
        raise ProtocolError(f"head not terminated by CRLFCRLF: {head!r}")
    lines = head[:-4].split(b"\r\n")
    status_line = lines[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 3 or parts[0] != b"HTTP/1.1" or not parts[1].isdigit() or len(parts[1]) != 3:
        raise ProtocolError(f"bad status line {status_line!r}")
    headers = []
    for line in lines[1:]:
        if b"\n" in line or b"\r" in line:
            raise ProtocolError(f"bare CR or LF in header line {line!r}")
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"bad header line {line!r}")
        if any(c in name for c in b" \t()<>@,;:\\\"/[]?={}"):
            raise ProtocolError(f"bad header name {name!r}")
        if not value.startswith(b" ") and value:
            raise ProtocolError(f"header value not preceded by a single space {line!r}")
        headers.append((name, value[1:] if value.startswith(b" ") else value))
    for name, _ in headers:
        if name != name.lower():
            raise ProtocolError(f"header name not lowercased: {name!r}")
    return status_line, headers


def build_request(method: str = "GET", path: str = "/", headers=None, body: bytes | None = None,
                  version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}".encode()]
    hdrs = list(headers or [])
    names = {(k.lower() if isinstance(k, str) else k.decode().lower()) for k, _ in hdrs}
    if "host" not in names and version == "1.1":
        hdrs.insert(0, ("Host", "example.test"))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        hdrs.append(("Content-Length", str(len(body))))
    for k, v in hdrs:
        k = k.encode() if isinstance(k, str) else k
        v = v.encode() if isinstance(v, str) else v
        lines.append(k + b": " + v)
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def chunked(body: bytes, sizes=(7, 1, 100, 4096)) -> bytes:
    """Encode ``body`` with varied chunk sizes (cycled), plus a final zero chunk."""
    out = bytearray()
    pos = 0
    i = 0
    while pos < len(body):
        n = sizes[i % len(sizes)]
        piece = body[pos:pos + n]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        pos += n
        i += 1
    out += b"0\r\n\r\n"
    return bytes(out)


def request(server, method: str = "GET", path: str = "/", headers=None, body: bytes | None = None,
            version: str = "1.1", timeout: float = DEFAULT_TIMEOUT) -> Response:
    """One request on a fresh connection."""
    with Conn(server, timeout) as conn:
        return conn.request(method, path, headers, body, version, timeout)


def exchange(server, data: bytes, responses: int = 1, method: str = "GET", timeout: float = DEFAULT_TIMEOUT,
             expect_close: bool | None = None) -> tuple[list[Response], bool]:
    """Send ``data`` on a fresh connection, read ``responses`` responses, then report whether the
    server closed the connection (checked briefly) and whether it sent anything more."""
    with Conn(server, timeout) as conn:
        conn.send(data)
        out = [conn.read_response(method, timeout) for _ in range(responses)]
        closed = conn.is_closed(1.0 if expect_close is None else (2.0 if expect_close else 0.3))
        return out, closed
