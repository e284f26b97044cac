"""Normalisation helpers: what may legitimately differ between cppuvicorn and uvicorn is
replaced by placeholders (ports, pids, the server's name in its banner), everything else is
compared as is."""

from __future__ import annotations

import re
import time

RUNNING_RE = re.compile(r"(?:cppuvicorn|Uvicorn) running on")
PID_RE = re.compile(r"\[\d+\]")
ADDR_PORT_RE = re.compile(r"(127\.0\.0\.1|\[::1\]|localhost):\d+")
RFC1123_RE = re.compile(rb"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                        rb"\d{4} \d{2}:\d{2}:\d{2} GMT$")


def norm_scope(scope: dict, uds: str | None = None) -> dict:
    """An echoed HTTP scope with the client and server ports (and a UDS path) blanked, and
    without cppuvicorn's "http.response.pathsend" extension (Uvicorn does not advertise it;
    test_pathsend.py checks it): an "extensions" left empty goes too."""
    out = dict(scope)
    extensions = out.get("extensions")
    if isinstance(extensions, dict) and "http.response.pathsend" in extensions:
        assert extensions["http.response.pathsend"] == {}, extensions
        extensions = {k: v for k, v in extensions.items() if k != "http.response.pathsend"}
        if extensions:
            out["extensions"] = extensions
        else:
            del out["extensions"]
    for key in ("client", "server"):
        value = out.get(key)
        if isinstance(value, list) and len(value) == 2:
            host, port = value
            if uds is not None and host == uds:
                host = "<uds>"
            out[key] = [host, "<port>" if isinstance(port, int) else port]
    return out


def norm_log_line(line: str) -> str:
    line = RUNNING_RE.sub("<server> running on", line)
    line = PID_RE.sub("[PID]", line)
    line = ADDR_PORT_RE.sub(lambda m: m.group(1) + ":PORT", line)
    return line


def strip_default_headers(raw: bytes) -> bytes:
    """Remove the leading date/server header lines of every response head in ``raw``."""
    return re.sub(rb"(HTTP/1\.1 [^\r\n]*\r\n)((?:(?:date|server): [^\r\n]*\r\n)+)", rb"\1", raw)


def log_messages(lines: list[str], include_app: bool = True) -> list[str]:
    """Server and app log lines, normalised, without traceback bodies or access-log lines."""
    out = []
    for line in lines:
        if not re.match(r"^(INFO|WARNING|ERROR|CRITICAL|DEBUG|TRACE):\s", line) and not (
                include_app and line.startswith("APP: ")):
            continue
        if re.search(r'" \d{3}( |$)', line) and " - \"" in line:
            continue  # access log
        out.append(norm_log_line(line))
    return out


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value or the deadline passes (returns it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
