"""Shared pieces of ``soak.py`` and ``chaos.py``: the server process, /proc readers, and an
exact HTTP/1.1 client that counts every request.

The client is deliberately small and strict: a raw socket, one request at a time per
connection, the response read to its end (content-length, chunked, or until close) and
checked by the caller. Nothing is retried silently: the one retry there is (a request on a
reused keep-alive connection that the server closed before answering any byte; see
``Connection.exchange``) is recorded as such.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
APPS_DIR = HERE / "apps"
RESULTS_DIR = HERE / "results"
HOST = "127.0.0.1"

READY_RE = re.compile(r"running on https?://[^\s:]+:(\d+) \(Press CTRL\+C to quit\)")
STARTED_RE = re.compile(r"Started server process \[(\d+)\]")


# ----------------------------------------------------------------------------- the server


def _die_with_parent() -> None:
    """preexec: SIGTERM the child when this harness dies without cleaning up."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class ServerProc:
    """``python -m cppuvicorn APP ...`` in its own session; stderr and stdout are collected
    line by line with their arrival time."""

    def __init__(self, app: str, args: list[str], env: dict | None = None, python: str = sys.executable):
        self.command = [python, "-m", "cppuvicorn", app, "--app-dir", str(APPS_DIR), "--host", HOST,
                        "--port", "0", *args]
        self.env = dict(os.environ)
        for key in list(self.env):
            if key.startswith(("UVICORN_", "CPPUVICORN_")) or key == "WEB_CONCURRENCY":
                del self.env[key]
        self.env["PYTHONUNBUFFERED"] = "1"
        # The server runs in apps/: a relative PYTHONPATH (PYTHONPATH=cli) must still mean
        # what it meant here, or another installed cppuvicorn would be picked up.
        if self.env.get("PYTHONPATH"):
            self.env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) if p else p
                                                     for p in self.env["PYTHONPATH"].split(os.pathsep))
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.lines: list[tuple[float, str]] = []
        self.port: int | None = None
        self._cond = threading.Condition()
        self._readers: list[threading.Thread] = []

    def describe(self) -> str:
        """Which cppuvicorn this command runs: its version and where it is imported from."""
        probe = subprocess.run(
            [self.command[0], "-c", "import cppuvicorn, os, sys; "
             "print(cppuvicorn.__version__, os.path.dirname(cppuvicorn.__file__), sys.version.split()[0])"],
            capture_output=True, text=True, env=self.env, cwd=str(APPS_DIR), timeout=60)
        parts = probe.stdout.split()
        if probe.returncode != 0 or len(parts) != 3:
            return f"cppuvicorn (import failed: {probe.stderr.strip()[-200:]})"
        version, where, python = parts
        commit = ""
        if "site-packages" not in where:  # a source tree (PYTHONPATH=cli, or an editable install)
            try:
                commit = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, timeout=10).stdout.strip()
            except OSError:
                pass
        return f"cppuvicorn {version} from `{where}`" + (f" (git {commit})" if commit else "") + f", Python {python}"

    def start(self, timeout: float = 30.0) -> "ServerProc":
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=self.env, cwd=str(APPS_DIR),
                                     start_new_session=True, preexec_fn=_die_with_parent)
        for stream in (self.proc.stdout, self.proc.stderr):
            t = threading.Thread(target=self._read, args=(stream,), daemon=True)
            t.start()
            self._readers.append(t)
        m = self.wait_for(READY_RE, timeout)
        if m is None:
            self.kill()
            raise RuntimeError(f"server did not start within {timeout}s:\n{self.log_text()}")
        self.port = int(m.group(1))
        return self

    def _read(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            with self._cond:
                self.lines.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip("\r\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait_for(self, pattern, timeout: float = 10.0, after: int = 0):
        """The first match of ``pattern`` in a line newer than ``after``, or None."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        index = after
        with self._cond:
            while True:
                while index < len(self.lines):
                    m = regex.search(self.lines[index][1])
                    index += 1
                    if m:
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not any(t.is_alive() for t in self._readers)):
                    return None
                self._cond.wait(min(remaining, 0.2))

    def count(self, pattern: str, after: int = 0) -> int:
        regex = re.compile(pattern)
        with self._cond:
            return sum(1 for _, line in self.lines[after:] if regex.search(line))

    def log_text(self, after: int = 0) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines[after:])

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for t in self._readers:
            t.join(timeout=2)
        return code

    def kill(self) -> None:
        """SIGKILL the whole session (the server and its workers)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for t in self._readers:
            t.join(timeout=2)

    def __enter__(self) -> "ServerProc":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


# ----------------------------------------------------------------------------- /proc


def children(pid: int) -> set[int]:
    """Live (non-zombie) children of ``pid``."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def rss_kib(pid: int) -> int | None:
    """VmRSS in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def tcp_sockets(port: int) -> dict[tuple[int, int], tuple[int, int, str]]:
    """IPv4 sockets touching ``port``: (local port, remote port) -> (tx_queue, rx_queue, state).

    For an established socket, tx_queue is what the kernel holds unsent or unacknowledged and
    rx_queue what arrived and was not read yet."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, state, queues = parts[1], parts[2], parts[3], parts[4]
            lport, rport = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
            if port in (lport, rport):
                tx, rx = queues.split(":")
                out[(lport, rport)] = (int(tx, 16), int(rx, 16), TCP_STATES.get(int(state, 16), state))
    return out


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ----------------------------------------------------------------------------- HTTP client


class HttpError(Exception):
    """A failed exchange: ``stage`` is "connect", "send", "head" (closed or reset before any
    byte of the response), "body" (cut during the response) or "check" (a wrong answer)."""

    def __init__(self, stage: str, detail: str, got_bytes: int = 0):
        super().__init__(f"{stage}: {detail}")
        self.stage = stage
        self.detail = detail
        self.got_bytes = got_bytes


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    close: bool

    @property
    def pid(self) -> int | None:
        value = self.headers.get(b"x-worker-pid")
        return int(value) if value else None


def build_request(method: str, path: str, body: bytes = b"", close: bool = False, extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: {HOST}\r\n{extra}"
    if body or method == "POST":
        head += f"content-type: application/octet-stream\r\ncontent-length: {len(body)}\r\n"
    if close:
        head += "connection: close\r\n"
    return head.encode() + b"\r\n" + body


class _Reader:
    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.deadline = deadline
        self.buf = bytearray()
        self.total = 0

    def fill(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("response timed out")
        self.sock.settimeout(remaining)
        data = self.sock.recv(262144)
        if not data:
            return False
        self.buf += data
        self.total += len(data)
        return True

    def until(self, sep: bytes, limit: int = 65536) -> bytes:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise HttpError("body", "line too long", self.total)
            if not self.fill():
                raise HttpError("head" if self.total == 0 else "body", "connection closed", self.total)

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise HttpError("body", f"closed after {len(self.buf)} of {n} body bytes", self.total)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def rest(self) -> bytes:
        while self.fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out


def read_response(sock: socket.socket, timeout: float, method: str = "GET") -> Response:
    r = _Reader(sock, time.monotonic() + timeout)
    try:
        head = r.until(b"\r\n\r\n")
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise HttpError("head" if r.total == 0 else "body", repr(exc), r.total) from None
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HttpError("body", f"bad status line {lines[0][:80]!r}", r.total)
    status = int(parts[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    close = headers.get(b"connection", b"").lower() == b"close" or parts[0] == b"HTTP/1.0"
    try:
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif b"transfer-encoding" in headers:
            chunks = []
            while True:
                size = int(r.until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while r.until(b"\r\n"):  # trailers
                        pass
                    break
                chunks.append(r.exactly(size))
                if r.exactly(2) != b"\r\n":
                    raise HttpError("body", "bad chunk framing", r.total)
            body = b"".join(chunks)
        elif b"content-length" in headers:
            body = r.exactly(int(headers[b"content-length"]))
        else:
            body = r.rest()
            close = True
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise HttpError("body", repr(exc), r.total) from None
    return Response(status, headers, body, close)


class Connection:
    """One client connection, opened on demand and reused (keep-alive) unless ``keep_alive``
    is False (then every request goes on a new connection with ``connection: close``).

    ``exchange`` returns ``(response, retried)``. The one retry: when a request was sent on a
    *reused* keep-alive connection and the server closed or reset it before any byte of a
    response arrived, the request is sent once more on a new connection, as HTTP clients do
    (RFC 9112 §9.3.1: the server may close an idle connection at any moment, and a client
    cannot tell that from a lost request). Any other error raises ``HttpError``."""

    def __init__(self, port: int, keep_alive: bool = True, timeout: float = 10.0):
        self.port = port
        self.keep_alive = keep_alive
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.opened_at = 0.0
        self.pid: int | None = None  # the worker that answered the last request on this connection
        self.requests = 0  # requests on the current socket
        self.retried = False  # whether the last exchange needed the retry
        self.retry_reason: str | None = None  # and why

    def _open(self) -> None:
        try:
            self.sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
        except OSError as exc:
            raise HttpError("connect", repr(exc)) from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened_at = time.monotonic()
        self.pid = None
        self.requests = 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _once(self, data: bytes, method: str) -> Response:
        if self.sock is None:
            self._open()
        self.requests += 1
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.close()
            raise HttpError("send", repr(exc)) from None
        try:
            resp = read_response(self.sock, self.timeout, method)
        except HttpError:
            self.close()
            raise
        except OSError as exc:  # timeout, reset
            self.close()
            raise HttpError("body" if isinstance(exc, socket.timeout) else "head", repr(exc)) from None
        self.pid = resp.pid or self.pid
        if resp.close or not self.keep_alive:
            self.close()
        return resp

    def exchange(self, method: str, path: str, body: bytes = b"", extra: str = "") -> tuple[Response, bool]:
        """``extra``: more header lines, each ending in CRLF."""
        data = build_request(method, path, body, close=not self.keep_alive, extra=extra)
        reused = self.sock is not None and self.requests > 0
        self.retried = False
        self.retry_reason = None
        try:
            return self._once(data, method), False
        except HttpError as exc:
            if not (reused and exc.stage in ("send", "head") and exc.got_bytes == 0):
                raise
            self.retried, self.retry_reason = True, f"{exc.stage}: {exc.detail}"
        return self._once(data, method), True


# ----------------------------------------------------------------------------- misc


def linear_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x (per unit of x), None with fewer than 2 points."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def results_path(prefix: str, out: str | None) -> Path:
    if out:
        return Path(out)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}-{time.strftime('%Y-%m-%d')}"
    path, n = RESULTS_DIR / f"{stem}.md", 2
    while path.exists():
        path = RESULTS_DIR / f"{stem}-{n}.md"
        n += 1
    return path
