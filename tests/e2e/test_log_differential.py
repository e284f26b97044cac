"""The whole log of a scripted session, compared line by line with Uvicorn's, per option.

Each case starts both servers with the same options, sends the same requests one after the
other (so the order of lines is fixed), stops them with SIGTERM, and compares everything they
wrote to stdout and to stderr: start-up, access lines, warnings, the error line and the final
exception line of a traceback, shutdown. What may differ is normalised (ports, pids, the
server's name in the banner); traceback frames are dropped (they name each server's own code).
"""

from __future__ import annotations

import difflib
import re
import signal
import socket
import time

import pytest

from conftest import RAW_APP, START_TIMEOUT
from rawhttp import Conn, build_request, request
from support import norm_log_line

LEVEL_RE = re.compile(r"^(?:\x1b\[\d+m)?(INFO|WARNING|ERROR|CRITICAL|DEBUG|TRACE)(?:\x1b\[0m)?:\s")
# The websockets library's own frame-level debug log ("< TEXT 'hello' [5 bytes]", "= connection
# is OPEN"): Uvicorn's websockets implementation passes its logger on; cppuvicorn's frames are C++.
WS_LIBRARY_DEBUG_RE = re.compile(r"^DEBUG:\s+[<>=] ")
# cppuvicorn's HTTP scopes advertise pathsend (Uvicorn's have no extensions): the trace line of a
# scope ends with it.
PATHSEND_IN_SCOPE = ", 'extensions': {'http.response.pathsend': {}}"
CONN_EVENT_RE = re.compile(r" - (HTTP|WebSocket) connection (made|lost)$")
PORT_IN_SCOPE_RE = re.compile(r"\('127\.0\.0\.1', \d+\)")
COLOURED_PID_RE = re.compile(r"\[\x1b\[36m\d+\x1b\[0m\]")
EXCEPTION_RE = re.compile(r"^[A-Za-z_.]*(Error|Exception): ")
# cppuvicorn-only by design (issue #7: every limit logs its reason at debug level; the wire
# answer and Uvicorn's own warning are unchanged).
EXTRA_DEBUG_RE = re.compile(r"^DEBUG:.*Invalid HTTP request \(400\) from ")


def _spawn(s, args: list[str]):
    """Start on a port chosen here when the "running on" line that the harness reads the port
    from is missing or coloured (--log-level warning, --use-colors); the probe connection that
    waits for the port is not in the log at these levels."""
    if not any(a in args for a in ("warning", "--use-colors")):
        return s.spawn(RAW_APP, *args)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    srv = s.spawn(RAW_APP, *args, "--port", str(port), wait_ready=False)
    srv.scheme, srv.host, srv.port = "http", "127.0.0.1", port
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return srv
        except OSError:
            assert srv.alive() and time.monotonic() < deadline, srv.log_text()
            time.sleep(0.05)


def _script(srv) -> None:
    """The requests every case sends, each answered before the next is sent."""
    assert request(srv, "GET", "/hello").status == 200
    assert request(srv, "GET", "/nope?x=1&y=%22").status == 404
    assert request(srv, "POST", "/echo", body=b"x" * 1000).status == 200
    assert request(srv, "GET", "/status/418", headers=[("X-Forwarded-For", "203.0.113.7, 198.51.100.1"),
                                                       ("X-Forwarded-Proto", "https")]).status == 418
    mark = srv.mark()
    assert request(srv, "GET", "/raise-before").status == 500
    srv.wait_for_line(r"RuntimeError: boom before start", after=mark)
    with Conn(srv) as c:  # malformed: 400 and close
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n")
        c.read_until_close()
    mark = srv.mark()
    with Conn(srv) as c:  # the barrier: its access line comes after everything above
        assert c.request("GET", "/hello?last=1").status == 200
        port = c.local_port
    if not any(k in srv.args for k in ("--no-access-log", "warning")):
        srv.wait_for_line(rf":{port} - \"(\x1b\[1m)?GET (/api)?/hello\?last=1", after=mark, stream="stdout")


def _norm(lines: list[str]) -> list[str]:
    """The comparable lines, normalised. At TRACE, a run of "connection made/lost" lines of
    different connections is sorted: whether the next connection's accept or the previous
    one's close is seen first is a race in both servers."""
    out = _norm_lines(lines)
    i = 0
    while i < len(out):
        j = i
        while j < len(out) and CONN_EVENT_RE.search(out[j]):
            j += 1
        out[i:j] = sorted(out[i:j])
        i = j + 1
    return out


def _norm_lines(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if LEVEL_RE.match(line) or " - \"" in line or line.startswith("APP: "):
            if EXTRA_DEBUG_RE.match(line):
                continue
            line = PORT_IN_SCOPE_RE.sub("('127.0.0.1', PORT)", COLOURED_PID_RE.sub("[PID]", line))
            line = line.replace(PATHSEND_IN_SCOPE, "")
            out.append(norm_log_line(line))
        elif EXCEPTION_RE.match(line):
            out.append(line)
    return out


CASES = {
    "default": [],
    "log-level-debug": ["--log-level", "debug"],
    "log-level-warning": ["--log-level", "warning"],
    "log-level-trace": ["--log-level", "trace"],
    "no-access-log": ["--no-access-log"],
    "use-colors": ["--use-colors"],
    "root-path": ["--root-path", "/api"],
    "forwarded-allow-all": ["--forwarded-allow-ips", "*"],
    "no-proxy-headers": ["--no-proxy-headers", "--forwarded-allow-ips", "*"],
    "lifespan-off": ["--lifespan", "off"],
    "headers-and-limits": ["--no-server-header", "--no-date-header", "--header", "x-a:b", "--backlog", "64",
                           "--timeout-keep-alive", "3", "--limit-concurrency", "50", "--limit-max-requests", "1000",
                           "--h11-max-incomplete-event-size", "16384"],
    "interface-asgi3-http-httptools-ws-none": ["--interface", "asgi3", "--http", "httptools", "--ws", "none",
                                               "--loop", "asyncio"],
    "log-config-json": ["--log-config", "{log_config}"],
}

# A config of the kind users write for Uvicorn: its logger names, stdlib formatters.
LOG_CONFIG = """{
  "version": 1, "disable_existing_loggers": false,
  "formatters": {"plain": {"format": "%(levelname)s: [%(name)s] %(message)s"}},
  "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stdout"},
               "err": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
  "loggers": {"uvicorn": {"handlers": ["err"], "level": "DEBUG", "propagate": false},
              "uvicorn.access": {"handlers": ["out"], "level": "INFO", "propagate": false}}
}"""


@pytest.mark.parametrize("case", list(CASES))
def test_session_log_matches_uvicorn(servers, case, tmp_path):
    log_config = tmp_path / "log.json"
    log_config.write_text(LOG_CONFIG)
    args = [a.format(log_config=log_config) for a in CASES[case]]

    def run(s):
        srv = _spawn(s, args)
        _script(srv)
        code = srv.stop(signal.SIGTERM)
        # A deliberate difference (see Server.capture_signals): Uvicorn re-raises SIGTERM after
        # its graceful shutdown and dies by it; cppuvicorn exits 0.
        assert code == (-signal.SIGTERM if s.is_oracle else 0), code
        return {"stdout": _norm(srv.log_lines(stream="stdout")), "stderr": _norm(srv.log_lines(stream="stderr"))}

    logs = run(servers)
    if servers.oracle is not None:
        theirs = run(servers.oracle)
        for stream in ("stdout", "stderr"):
            diff = "\n".join(difflib.unified_diff(theirs[stream], logs[stream], "uvicorn", "cppuvicorn", lineterm=""))
            assert not diff, f"{stream} differs with {args}:\n{diff}"
    # The comparison must have had something to compare.
    assert logs["stderr"], logs
    if case not in ("no-access-log", "log-level-warning"):
        assert any("/hello?last=1 HTTP/1.1" in line for line in logs["stdout"] + logs["stderr"]), logs


def test_websocket_session_trace_log_matches_uvicorn(servers):
    """A WebSocket session at TRACE: connection made/lost lines, ASGI messages, close."""
    from websockets.sync.client import connect

    def run(s):
        srv = s.spawn("ws_apps:app", "--log-level", "trace", "--ws-per-message-deflate", "false")
        mark = srv.mark()
        with connect(f"ws://{srv.host}:{srv.port}/echo", open_timeout=10) as ws:
            ws.send("hello")
            assert ws.recv(timeout=10) == "hello"
        srv.wait_for_line(r"WebSocket connection lost$", after=mark)
        assert srv.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        lines = [line for line in _norm(srv.log_lines(stream="stderr", after=mark))
                 if not line.startswith("APP: ") and not WS_LIBRARY_DEBUG_RE.match(line)]
        # When the close is seen relative to the app's last steps is a race: compare the
        # connection events as a set, the rest in order.
        return ([line for line in lines if not CONN_EVENT_RE.search(line)],
                sorted(line for line in lines if CONN_EVENT_RE.search(line)))

    logs, events = run(servers)
    if servers.oracle is not None:
        their_logs, their_events = run(servers.oracle)
        diff = "\n".join(difflib.unified_diff(their_logs, logs, "uvicorn", "cppuvicorn", lineterm=""))
        assert not diff, diff
        assert events == their_events
    assert events == ["TRACE:    127.0.0.1:PORT - HTTP connection made",
                      "TRACE:    127.0.0.1:PORT - WebSocket connection lost",
                      "TRACE:    127.0.0.1:PORT - WebSocket connection made"], events
